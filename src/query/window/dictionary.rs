//! Concatenating dictionary-encoded string columns into one column with one dictionary.
//!
//! Arrow's `concat` lays the parts' dictionaries end to end (it merges them only when their
//! keys would overflow), and casting to plain strings and back costs a copy and a hash of
//! every row's string. Here each part's dictionary is mapped once (a hash per distinct value)
//! and the keys are rewritten (an integer per row).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int32Array, NullBufferBuilder, StringBuilder,
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

    #[test]
    fn a_plain_column_is_an_error_not_a_panic() {
        let plain: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        assert!(concat_dictionaries(&[plain.as_ref()]).is_err());
    }
}
