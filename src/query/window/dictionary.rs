//! Concatenating dictionary-encoded string columns into one column with one dictionary.
//!
//! Arrow's `concat` lays the parts' dictionaries end to end (it merges them only when their
//! keys would overflow), and casting to plain strings and back costs a copy and a hash of
//! every row's string. Here each part's dictionary is mapped once (a hash per distinct value)
//! and the keys are rewritten (an integer per row).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, Int32Builder, StringBuilder};
use datafusion::arrow::datatypes::Int32Type;
use datafusion::arrow::error::ArrowError;

/// `parts` (each `Dictionary(Int32, Utf8)`) as one such column whose dictionary holds each
/// distinct value once, in order of first use.
pub fn concat_dictionaries(parts: &[&dyn Array]) -> Result<ArrayRef, ArrowError> {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut keys = Int32Builder::with_capacity(len);
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
        for key in dictionary.keys().iter() {
            let new = key.and_then(|k| mapping.get(k as usize).copied().flatten());
            keys.append_option(new);
        }
        if index.len() > i32::MAX as usize {
            return Err(ArrowError::DictionaryKeyOverflowError);
        }
    }
    let merged = DictionaryArray::<Int32Type>::try_new(keys.finish(), Arc::new(values.finish()))?;
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
    fn a_plain_column_is_an_error_not_a_panic() {
        let plain: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        assert!(concat_dictionaries(&[plain.as_ref()]).is_err());
    }
}
