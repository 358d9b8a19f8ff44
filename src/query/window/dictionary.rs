//! Concatenating dictionary-encoded string columns into one column with one dictionary.
//!
//! Arrow's `concat` lays the parts' dictionaries end to end (it merges them only when their
//! keys would overflow), and casting to plain strings and back costs a copy and a hash of
//! every row's string. Here each part's dictionary is mapped once (a hash per distinct value)
//! and the keys are rewritten (an integer per row).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int32Array, MapArray, MapBuilder, NullBufferBuilder, StringBuilder,
};
use datafusion::arrow::datatypes::Int32Type;
use datafusion::arrow::error::ArrowError;

/// `parts` (each `Dictionary(Int32, Utf8)`) as one such column whose dictionary holds each
/// distinct value once, in order of first use.
pub fn concat_dictionaries(parts: &[&dyn Array]) -> Result<ArrayRef, ArrowError> {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut keys: Vec<i32> = Vec::with_capacity(len);
    let mut nulls = NullBufferBuilder::new(len);
    let mut values = StringBuilder::new();
    let mut index: HashMap<&str, i32> = HashMap::new();
    for part in parts {
        let dictionary = part.as_dictionary_opt::<Int32Type>().ok_or_else(|| {
            ArrowError::InvalidArgumentError(format!("expected a dictionary, got {}", part.data_type()))
        })?;
        let part_values = dictionary.values().as_string_opt::<i32>().ok_or_else(|| {
            ArrowError::InvalidArgumentError(format!(
                "expected string dictionary values, got {}",
                dictionary.values().data_type()
            ))
        })?;
        // New key of each of this part's dictionary values (a null value maps to a null key).
        let mut mapping: Vec<Option<i32>> = Vec::with_capacity(part_values.len());
        for value in part_values.iter() {
            mapping.push(match value {
                None => None,
                Some(v) => {
                    let next = index.len();
                    let key = *index.entry(v).or_insert_with(|| {
                        values.append_value(v);
                        next as i32
                    });
                    Some(key)
                }
            });
        }
        let part_keys = dictionary.keys();
        if part_keys.null_count() == 0 && mapping.iter().all(Option::is_some) {
            // No null anywhere (most columns of most batches): one lookup per row, no null
            // bookkeeping per row. A key past the dictionary cannot be (the array checks its
            // keys when built); it would read as the first value, not panic.
            let mapping: Vec<i32> = mapping.iter().map(|k| k.unwrap_or_default()).collect();
            keys.extend(
                part_keys
                    .values()
                    .iter()
                    .map(|&k| mapping.get(k as usize).copied().unwrap_or_default()),
            );
            nulls.append_n_non_nulls(part_keys.len());
        } else {
            for key in part_keys.iter() {
                match key.and_then(|k| mapping.get(k as usize).copied().flatten()) {
                    Some(new) => {
                        keys.push(new);
                        nulls.append_non_null();
                    }
                    None => {
                        keys.push(0);
                        nulls.append_null();
                    }
                }
            }
        }
        if index.len() > i32::MAX as usize {
            return Err(ArrowError::DictionaryKeyOverflowError);
        }
    }
    let keys = Int32Array::new(keys.into(), nulls.finish());
    let merged = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values.finish()))?;
    Ok(Arc::new(merged))
}

/// `parts` (each a `Map(Utf8, Utf8)` column, or a dictionary of such maps with Int32 keys) as
/// one dictionary of maps holding each distinct label set once, in order of first use. A null
/// row (which `labels` never has) stays null.
pub fn concat_label_sets(parts: &[&dyn Array]) -> Result<ArrayRef, ArrowError> {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut keys: Vec<i32> = Vec::with_capacity(len);
    let mut nulls = NullBufferBuilder::new(len);
    let mut sets = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let mut index: HashMap<Vec<(&str, &str)>, i32> = HashMap::new();
    for part in parts {
        // The part's maps and, per row, which of them it holds (a plain map column: its own).
        let (maps, part_keys): (&MapArray, Option<&Int32Array>) = match part.as_dictionary_opt::<Int32Type>() {
            Some(dictionary) => (map_of(dictionary.values().as_ref())?, Some(dictionary.keys())),
            None => (map_of(*part)?, None),
        };
        let (map_keys, map_values) = (text_of(maps.keys())?, text_of(maps.values())?);
        let offsets = maps.value_offsets();
        let mut mapping: Vec<Option<i32>> = Vec::with_capacity(maps.len());
        for set in 0..maps.len() {
            if maps.is_null(set) {
                mapping.push(None);
                continue;
            }
            let (start, end) = (offsets[set] as usize, offsets[set + 1] as usize);
            let entries: Vec<(&str, &str)> = (start..end).map(|e| (map_keys.value(e), map_values.value(e))).collect();
            let next = index.len() as i32;
            let key = *index.entry(entries).or_insert_with_key(|entries| {
                for (k, v) in entries {
                    sets.keys().append_value(k);
                    sets.values().append_value(v);
                }
                next
            });
            if key == next {
                sets.append(true)?;
            }
            mapping.push(Some(key));
        }
        let rows = (0..part.len()).map(|row| match part_keys {
            Some(part_keys) if part_keys.is_null(row) => None,
            Some(part_keys) => mapping.get(part_keys.value(row) as usize).copied().flatten(),
            None => mapping[row],
        });
        for key in rows {
            keys.push(key.unwrap_or_default());
            nulls.append(key.is_some());
        }
        if index.len() > i32::MAX as usize {
            return Err(ArrowError::DictionaryKeyOverflowError);
        }
    }
    let keys = Int32Array::new(keys.into(), nulls.finish());
    let merged = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(sets.finish()))?;
    Ok(Arc::new(merged))
}

fn map_of(array: &dyn Array) -> Result<&MapArray, ArrowError> {
    array
        .as_map_opt()
        .ok_or_else(|| ArrowError::InvalidArgumentError(format!("expected a map, got {}", array.data_type())))
}

fn text_of(array: &ArrayRef) -> Result<&datafusion::arrow::array::StringArray, ArrowError> {
    array.as_string_opt::<i32>().ok_or_else(|| {
        ArrowError::InvalidArgumentError(format!(
            "expected map keys and values as text, got {}",
            array.data_type()
        ))
    })
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::DataType;

    use super::*;

    fn dictionary(values: &[Option<&str>]) -> ArrayRef {
        let plain = StringArray::from(values.to_vec());
        cast(
            &plain,
            &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        )
        .unwrap()
    }

    #[test]
    fn rows_keep_their_values_and_order_with_one_dictionary() {
        let a = dictionary(&[Some("x"), None, Some("y"), Some("x")]);
        let b = dictionary(&[Some("y"), Some("z"), None]);
        let merged = concat_dictionaries(&[a.as_ref(), b.as_ref()]).unwrap();
        let plain = cast(&merged, &DataType::Utf8).unwrap();
        let plain = plain.as_string::<i32>();
        let rows: Vec<Option<&str>> = plain.iter().collect();
        assert_eq!(
            rows,
            vec![Some("x"), None, Some("y"), Some("x"), Some("y"), Some("z"), None]
        );
        let dictionary = merged.as_dictionary::<Int32Type>();
        assert_eq!(dictionary.values().len(), 3, "each distinct value once");
        assert_eq!(merged.null_count(), 2);
    }

    #[test]
    fn parts_with_and_without_nulls_read_back_in_order() {
        let whole = dictionary(&[Some("b"), Some("a"), Some("b")]);
        let holed = dictionary(&[None, Some("c"), Some("a")]);
        let merged = concat_dictionaries(&[whole.as_ref(), holed.as_ref(), whole.as_ref()]).unwrap();
        let plain = cast(&merged, &DataType::Utf8).unwrap();
        let rows: Vec<Option<&str>> = plain.as_string::<i32>().iter().collect();
        let (a, b, c) = (Some("a"), Some("b"), Some("c"));
        assert_eq!(rows, vec![b, a, b, None, c, a, b, a, b]);
        assert_eq!(merged.as_dictionary::<Int32Type>().values().len(), 3);
        assert_eq!(merged.null_count(), 1);
    }

    /// A map column of `rows`, `None` a null row.
    fn maps(rows: &[Option<&[(&str, &str)]>]) -> ArrayRef {
        let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for row in rows {
            for (k, v) in row.iter().flat_map(|r| r.iter()) {
                b.keys().append_value(k);
                b.values().append_value(v);
            }
            b.append(row.is_some()).unwrap();
        }
        Arc::new(b.finish())
    }

    #[test]
    fn label_sets_from_maps_and_dictionaries_keep_each_set_once() {
        let (a, ab, b): (&[(&str, &str)], &[_], &[_]) = (&[("k", "1")], &[("k", "1"), ("t", "x")], &[("t", "x")]);
        let plain = maps(&[Some(a), Some(ab), Some(a), None]);
        let encoded = concat_label_sets(&[plain.as_ref()]).unwrap();
        assert_eq!(encoded.as_dictionary::<Int32Type>().values().len(), 2);
        // A slice of a plain column reads its own rows (offsets into the shared entries).
        let later = maps(&[Some(b), Some(ab)]).slice(1, 1);
        let merged = concat_label_sets(&[encoded.as_ref(), later.as_ref(), encoded.slice(2, 2).as_ref()]).unwrap();
        let dictionary = merged.as_dictionary::<Int32Type>();
        assert_eq!(
            dictionary.values().len(),
            2,
            "{{k=1}} and {{k=1, t=x}}, whatever part they came in"
        );
        assert_eq!(merged.null_count(), 2);
        let back = cast(&merged, plain.data_type()).unwrap();
        let expected = maps(&[Some(a), Some(ab), Some(a), None, Some(ab), Some(a), None]);
        assert_eq!(back.as_ref(), expected.as_ref());
    }

    #[test]
    fn a_plain_column_is_an_error_not_a_panic() {
        let plain: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        assert!(concat_dictionaries(&[plain.as_ref()]).is_err());
    }
}
