//! What a scan's filters allow: an event-time range (which buckets to visit) and, for point
//! lookups on `id`, the ids (which batches' Bloom filters to ask).

use datafusion::arrow::array::Array;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

/// A Bloom filter over a batch's ids: 16 bits per id and 3 probes (about 0.2% false
/// positives), 2 bytes of memory per row.
#[derive(Debug)]
pub(super) struct IdFilter {
    bits: Vec<u64>,
}

impl IdFilter {
    fn probes(id: &str, num_bits: usize) -> [usize; 3] {
        use std::hash::{BuildHasher, Hasher};
        // A fixed-key hasher: the filter must answer the same for the same id at query time.
        let mut h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
        h.write(id.as_bytes());
        let x = h.finish();
        let (a, b) = (x as u32 as usize, (x >> 32) as usize | 1);
        [
            a % num_bits,
            a.wrapping_add(b) % num_bits,
            a.wrapping_add(b.wrapping_mul(2)) % num_bits,
        ]
    }

    pub(super) fn build(ids: &datafusion::arrow::array::StringArray) -> IdFilter {
        let num_bits = (ids.len() * 16).max(64).next_power_of_two();
        let mut bits = vec![0u64; num_bits / 64];
        for id in ids.iter().flatten() {
            for p in IdFilter::probes(id, num_bits) {
                bits[p / 64] |= 1 << (p % 64);
            }
        }
        IdFilter { bits }
    }

    pub(super) fn may_contain(&self, id: &str) -> bool {
        let num_bits = self.bits.len() * 64;
        IdFilter::probes(id, num_bits)
            .iter()
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }

    pub(super) fn num_bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

fn timestamp_us(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else { return None };
    match value {
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(v.div_euclid(1000)),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000),
        _ => None,
    }
}

fn is_time_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(c) if c.name == "time")
}

/// What a scan's filters allow: an event-time range and, for point lookups, a set of ids.
#[derive(Debug)]
pub(super) struct Pruning {
    pub from_us: i64,
    pub to_us: i64,
    pub ids: Option<Vec<String>>,
}

impl Default for Pruning {
    fn default() -> Self {
        Pruning {
            from_us: i64::MIN,
            to_us: i64::MAX,
            ids: None,
        }
    }
}

fn string_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s),
        _ => None,
    }
}

fn is_id_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(c) if c.name == "id")
}

/// The ids a top-level conjunct `id = '...'` or `id IN ('...', ...)` pins the scan to.
fn id_lookup(filters: &[Expr]) -> Option<Vec<String>> {
    let mut stack: Vec<&Expr> = filters.iter().collect();
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                stack.push(left);
                stack.push(right);
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => {
                if is_id_column(left)
                    && let Some(v) = string_literal(right)
                {
                    return Some(vec![v.to_owned()]);
                }
                if is_id_column(right)
                    && let Some(v) = string_literal(left)
                {
                    return Some(vec![v.to_owned()]);
                }
            }
            Expr::InList(list) if !list.negated && is_id_column(&list.expr) => {
                let ids: Option<Vec<String>> = list.list.iter().map(|e| string_literal(e).map(str::to_owned)).collect();
                if ids.is_some() {
                    return ids;
                }
            }
            _ => {}
        }
    }
    None
}

pub(super) fn pruning(filters: &[Expr]) -> Pruning {
    let (from_us, to_us) = time_bounds(filters);
    Pruning {
        from_us,
        to_us,
        ids: id_lookup(filters),
    }
}

/// The event-time range `[from, to]` (µs) the filters allow: conjuncts comparing `time` with
/// a timestamp literal (`now() - INTERVAL ...` is folded to one before it gets here).
pub(crate) fn time_bounds(filters: &[Expr]) -> (i64, i64) {
    let (mut from, mut to) = (i64::MIN, i64::MAX);
    let mut apply = |op: Operator, v: i64| match op {
        Operator::Gt | Operator::GtEq => from = from.max(v),
        Operator::Lt | Operator::LtEq => to = to.min(v),
        Operator::Eq => {
            from = from.max(v);
            to = to.min(v);
        }
        _ => {}
    };
    let mut stack: Vec<&Expr> = filters.iter().collect();
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                stack.push(left);
                stack.push(right);
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if is_time_column(left)
                    && let Some(v) = timestamp_us(right)
                {
                    apply(*op, v);
                } else if is_time_column(right)
                    && let Some(v) = timestamp_us(left)
                    && let Some(swapped) = op.swap()
                {
                    apply(swapped, v);
                }
            }
            Expr::Between(b) if !b.negated && is_time_column(&b.expr) => {
                if let Some(v) = timestamp_us(&b.low) {
                    apply(Operator::GtEq, v);
                }
                if let Some(v) = timestamp_us(&b.high) {
                    apply(Operator::LtEq, v);
                }
            }
            _ => {}
        }
    }
    (from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_filters_bound_the_scan() {
        use datafusion::prelude::{col, lit};
        let ts = |v: i64| lit(ScalarValue::TimestampMicrosecond(Some(v), Some("UTC".into())));
        assert_eq!(time_bounds(&[col("time").gt_eq(ts(100))]), (100, i64::MAX));
        assert_eq!(time_bounds(&[ts(100).gt(col("time"))]), (i64::MIN, 100));
        assert_eq!(
            time_bounds(&[
                col("time").gt(ts(100)).and(col("time").lt(ts(200))),
                col("name").eq(lit("x"))
            ]),
            (100, 200)
        );
        assert_eq!(time_bounds(&[col("time").between(ts(5), ts(9))]), (5, 9));
        assert_eq!(
            time_bounds(&[col("time").gt(ts(1)).or(col("time").lt(ts(0)))]),
            (i64::MIN, i64::MAX)
        );
    }

    #[test]
    fn id_filters_answer_maybe_for_every_member() {
        let ids: Vec<String> = (0..2000).map(|i| format!("id-{i}")).collect();
        let filter = IdFilter::build(&datafusion::arrow::array::StringArray::from(ids.clone()));
        assert!(ids.iter().all(|id| filter.may_contain(id)));
        let false_positives = (0..10_000)
            .filter(|i| filter.may_contain(&format!("other-{i}")))
            .count();
        assert!(false_positives < 100, "{false_positives} false positives in 10000");
        use datafusion::prelude::{col, lit};
        assert_eq!(id_lookup(&[col("id").eq(lit("a"))]), Some(vec!["a".to_owned()]));
        assert_eq!(
            id_lookup(&[col("id").in_list(vec![lit("a"), lit("b")], false)]),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            id_lookup(&[col("id").eq(lit("a")).or(col("principal").eq(lit("b")))]),
            None
        );
    }
}
