//! Functions that build values of a size chosen by the query (`repeat('x', 2000000000)`,
//! `lpad`, `range`, `array_repeat`, nested `replace`s, `concat` of many copies) check what they
//! would build before building it. DataFusion's memory pool sees operators (sorts, joins,
//! aggregations), not the arrays a scalar function allocates, so without this one short query
//! grows the process by gigabytes whatever `server.sql_memory_limit` says.
//!
//! Each wrapped function keeps its name, signature and result; only its evaluation first
//! estimates an upper bound of its output from its arguments, per value and per call.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `len(s) * n`.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: `n` characters (up to 4 bytes each).
    Pad,
    /// `replace(s, from, to)`: each byte of `s` may become `to`.
    Replace,
    /// `regexp_replace(s, pattern, to [, flags])`: also between bytes (empty matches).
    RegexpReplace,
    /// `concat(a, b, ...)`, `concat_ws`, `overlay`, `array_concat`: the sum of the inputs.
    Sum,
    /// `array_repeat(e, n)`, `array_resize(a, n [, e])`: `n` elements of the value's size.
    Elements,
    /// `range(start, stop [, step])`, `generate_series`: `|stop - start| / step` elements.
    Range,
}

const WRAPPED: [(&str, Growth); 13] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("concat", Growth::Sum),
    ("concat_ws", Growth::Sum),
    ("overlay", Growth::Sum),
    ("array_concat", Growth::Sum),
    ("array_repeat", Growth::Elements),
    ("array_resize", Growth::Elements),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
];

/// Replaces the session's size-building functions with capped ones: a value may not pass
/// `max_value_bytes`, and one call's whole output (a batch) not `max_call_bytes`.
pub fn install(ctx: &SessionContext, max_value_bytes: u64, max_call_bytes: u64) {
    let state = ctx.state();
    for (name, growth) in WRAPPED {
        if let Some(inner) = state.scalar_functions().get(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Capped {
                inner: inner.clone(),
                growth,
                max_value_bytes,
                max_call_bytes,
            }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Capped {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    max_value_bytes: u64,
    max_call_bytes: u64,
}

impl ScalarUDFImpl for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let per_value = estimate(self.growth, &args.args);
        let rows = if args.args.iter().any(|a| matches!(a, ColumnarValue::Array(_))) {
            args.number_rows.max(1) as u64
        } else {
            1
        };
        let per_call = per_value.saturating_mul(rows);
        if per_value > self.max_value_bytes || per_call > self.max_call_bytes {
            let (what, bytes, cap, key) = if per_value > self.max_value_bytes {
                ("a value", per_value, self.max_value_bytes, "server.sql_max_value_bytes")
            } else {
                (
                    "one batch of values",
                    per_call,
                    self.max_call_bytes,
                    "server.sql_memory_limit / 4",
                )
            };
            return exec_err!(
                "{}() would build {what} of up to {bytes} bytes, over the {cap}-byte cap ({key})",
                self.inner.name()
            );
        }
        self.inner.invoke_with_args(args)
    }
}

/// An upper bound of the bytes one output value takes.
fn estimate(growth: Growth, args: &[ColumnarValue]) -> u64 {
    let len = |i: usize| args.get(i).map_or(0, max_len);
    let count = |i: usize| args.get(i).map_or(0, max_count);
    match growth {
        Growth::Repeat => len(0).saturating_mul(count(1)),
        Growth::Pad => count(1).saturating_mul(4).saturating_add(len(0)),
        Growth::Replace => len(0).saturating_mul(len(2).max(1)),
        Growth::RegexpReplace => (len(0) + 1).saturating_mul(len(2) + 1),
        // concat_ws puts its separator (argument 0) between every two values.
        Growth::Sum => (0..args.len())
            .map(len)
            .fold(0u64, u64::saturating_add)
            .saturating_add(len(0).saturating_mul(args.len() as u64)),
        Growth::Elements => count(1).saturating_mul(len(0).max(len(2)).max(8)),
        Growth::Range => range_elements(args).saturating_mul(8),
    }
}

/// The longest value of an argument, in bytes (strings, binaries); other values by their
/// array's memory size, an upper bound.
fn max_len(arg: &ColumnarValue) -> u64 {
    match arg {
        ColumnarValue::Scalar(s) => match s {
            ScalarValue::Utf8(Some(v)) | ScalarValue::LargeUtf8(Some(v)) | ScalarValue::Utf8View(Some(v)) => {
                v.len() as u64
            }
            ScalarValue::Binary(Some(v)) | ScalarValue::LargeBinary(Some(v)) | ScalarValue::BinaryView(Some(v)) => {
                v.len() as u64
            }
            other => other.size() as u64,
        },
        ColumnarValue::Array(a) => array_max_len(a),
    }
}

fn array_max_len(a: &ArrayRef) -> u64 {
    let longest = match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().iter().flatten().map(str::len).max(),
        DataType::LargeUtf8 => a.as_string::<i64>().iter().flatten().map(str::len).max(),
        DataType::Utf8View => a.as_string_view().iter().flatten().map(str::len).max(),
        DataType::Binary => a.as_binary::<i32>().iter().flatten().map(<[u8]>::len).max(),
        DataType::LargeBinary => a.as_binary::<i64>().iter().flatten().map(<[u8]>::len).max(),
        _ => Some(a.get_array_memory_size()),
    };
    longest.unwrap_or(0) as u64
}

/// The largest count an integer argument asks for (negative counts build nothing).
fn max_count(arg: &ColumnarValue) -> u64 {
    let as_i64 = |a: &ArrayRef| -> Option<i64> {
        let a = datafusion::arrow::compute::cast(a, &DataType::Int64).ok()?;
        datafusion::arrow::compute::max(a.as_primitive::<Int64Type>())
    };
    let largest = match arg {
        ColumnarValue::Scalar(s) => s.to_array().ok().and_then(|a| as_i64(&a)),
        ColumnarValue::Array(a) => as_i64(a),
    };
    largest.unwrap_or(0).max(0) as u64
}

/// Elements `range`/`generate_series` would make: integers directly; dates and timestamps by
/// their distance in nanoseconds over the step's (a month counted as 28 days, the shortest).
fn range_elements(args: &[ColumnarValue]) -> u64 {
    let scalar = |i: usize| -> Option<ScalarValue> {
        match args.get(i)? {
            ColumnarValue::Scalar(s) => Some(s.clone()),
            // Per row; the widest row decides. Arrays are rare here, so take them row by row.
            ColumnarValue::Array(_) => None,
        }
    };
    if args.iter().any(|a| matches!(a, ColumnarValue::Array(_))) {
        return array_range_elements(args);
    }
    let (start, stop, step) = match args.len() {
        1 => (Some(ScalarValue::Int64(Some(0))), scalar(0), None),
        2 => (scalar(0), scalar(1), None),
        _ => (scalar(0), scalar(1), scalar(2)),
    };
    elements_between(start.as_ref(), stop.as_ref(), step.as_ref())
}

fn array_range_elements(args: &[ColumnarValue]) -> u64 {
    let rows = args
        .iter()
        .filter_map(|a| match a {
            ColumnarValue::Array(a) => Some(a.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .max()
        .unwrap_or(0);
    let at = |i: usize, row: usize| -> Option<ScalarValue> {
        match args.get(i)? {
            ColumnarValue::Scalar(s) => Some(s.clone()),
            ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row).ok(),
        }
    };
    (0..rows)
        .map(|row| match args.len() {
            1 => elements_between(Some(&ScalarValue::Int64(Some(0))), at(0, row).as_ref(), None),
            2 => elements_between(at(0, row).as_ref(), at(1, row).as_ref(), None),
            _ => elements_between(at(0, row).as_ref(), at(1, row).as_ref(), at(2, row).as_ref()),
        })
        .max()
        .unwrap_or(0)
}

fn elements_between(start: Option<&ScalarValue>, stop: Option<&ScalarValue>, step: Option<&ScalarValue>) -> u64 {
    let (Some(start), Some(stop)) = (start, stop) else {
        return 0;
    };
    let step = match step {
        None => 1i128,
        Some(ScalarValue::IntervalMonthDayNano(Some(i))) => {
            i128::from(i.months) * 28 * 86_400_000_000_000
                + i128::from(i.days) * 86_400_000_000_000
                + i128::from(i.nanoseconds)
        }
        Some(ScalarValue::IntervalDayTime(Some(i))) => {
            i128::from(i.days) * 86_400_000_000_000 + i128::from(i.milliseconds) * 1_000_000
        }
        Some(ScalarValue::IntervalYearMonth(Some(m))) => i128::from(*m) * 28 * 86_400_000_000_000,
        Some(other) => i128::from(as_i64(other).unwrap_or(1)),
    };
    let (Some(a), Some(b)) = (as_nanos_or_int(start), as_nanos_or_int(stop)) else {
        return 0;
    };
    let step = step.unsigned_abs().max(1);
    let span = (b - a).unsigned_abs();
    u64::try_from(span / step + 1).unwrap_or(u64::MAX)
}

fn as_i64(v: &ScalarValue) -> Option<i64> {
    match v.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(v) => v,
        _ => None,
    }
}

/// Integers as they are; dates and timestamps in nanoseconds since the epoch.
fn as_nanos_or_int(v: &ScalarValue) -> Option<i128> {
    use datafusion::arrow::datatypes::TimeUnit;
    let nanos = DataType::Timestamp(TimeUnit::Nanosecond, None);
    match v {
        ScalarValue::Date32(Some(d)) => Some(i128::from(*d) * 86_400_000_000_000),
        ScalarValue::Date64(Some(ms)) => Some(i128::from(*ms) * 1_000_000),
        ScalarValue::TimestampSecond(Some(t), _) => Some(i128::from(*t) * 1_000_000_000),
        ScalarValue::TimestampMillisecond(Some(t), _) => Some(i128::from(*t) * 1_000_000),
        ScalarValue::TimestampMicrosecond(Some(t), _) => Some(i128::from(*t) * 1_000),
        ScalarValue::TimestampNanosecond(Some(t), _) => Some(i128::from(*t)),
        other if other.data_type().is_temporal() => match other.cast_to(&nanos).ok()? {
            ScalarValue::TimestampNanosecond(Some(t), _) => Some(i128::from(t)),
            _ => None,
        },
        other => as_i64(other).map(i128::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<usize, String> {
        let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
        let batches = df.collect().await.map_err(|e| e.to_string())?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn size_building_functions_are_capped_and_still_work() {
        let ctx = SessionContext::new();
        install(&ctx, 1 << 20, 16 << 20);
        for sql in [
            "SELECT length(repeat('x', 2000000000))",
            "SELECT lpad('x', 2000000000)",
            "SELECT rpad('x', 2000000000, 'ab')",
            "SELECT array_repeat(1, 2000000000)",
            "SELECT range(0, 10000000000)",
            "SELECT generate_series(1, 10000000000, 1)",
            "SELECT range(DATE '1970-01-01', DATE '9999-12-31', INTERVAL '1 second')",
            "SELECT length(replace(replace(replace(repeat('a', 1000), 'a', repeat('a', 1000)), 'a', repeat('a', 1000)), 'a', 'bb'))",
            "SELECT array_resize([1], 2000000000)",
        ] {
            let e = run(&ctx, sql).await.expect_err(sql);
            assert!(e.contains("cap"), "{sql}: {e}");
        }
        // Ordinary uses are untouched.
        assert_eq!(
            run(&ctx, "SELECT repeat('ab', 3), lpad('7', 3, '0'), concat('a', 'b')").await,
            Ok(1)
        );
        assert_eq!(run(&ctx, "SELECT unnest(range(0, 50000))").await, Ok(50_000));
        assert_eq!(
            run(
                &ctx,
                "SELECT range(DATE '2026-01-01', DATE '2026-02-01', INTERVAL '1 day')"
            )
            .await,
            Ok(1)
        );
        // Per row: a column of counts is checked by its largest.
        let e = run(&ctx, "SELECT repeat('x', n) FROM (VALUES (1), (3000000)) AS t(n)")
            .await
            .unwrap_err();
        assert!(e.contains("cap"), "{e}");
        assert_eq!(
            run(&ctx, "SELECT repeat('x', n) FROM (VALUES (1), (3)) AS t(n)").await,
            Ok(2)
        );
    }
}
