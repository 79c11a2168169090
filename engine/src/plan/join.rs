//! Joins in a streaming plan: a stream with a stream (the stateful `symmetricHashJoin`, in
//! append mode, its state bounded by the watermarks the join condition implies) or a stream
//! with a static table (stateless). Spark's rules decide which join types are allowed, and the
//! refusals say Spark's reason and what would work.

use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::{
    utils::split_conjunction, BinaryExpr, Expr, ExprSchemable, Join, JoinType, LogicalPlan,
    Operator,
};
use datafusion::physical_plan::PhysicalExpr;

use super::node::{Node, StaticJoinNode};
use super::static_table::{static_of_scan, StaticTable};
use super::stream::is_streaming;
use super::stream_plan::{Side, Stage};
use super::translate::{nullable_schema, translate, Ctx};
use crate::connector::OutputMode;
use crate::error::{EngineError, Result};
use crate::operators::join::bounds::{bound_of, TimeBound};
use crate::operators::join::static_join::{StaticJoin, StaticJoinKind, StaticJoinSpec};
use crate::operators::join::{JoinOp, JoinSide, StreamJoinType};

/// Translates a join of the plan.
pub(crate) fn translate_join(j: &Join, ctx: &mut Ctx<'_>) -> Result<Node> {
    match (is_streaming(&j.left), is_streaming(&j.right)) {
        (true, true) => stream_stream(j, ctx),
        (true, false) => stream_static(j, ctx, true),
        (false, true) => stream_static(j, ctx, false),
        (false, false) => Err(EngineError::user(
            "unsupported construct in streaming query: a join of two static tables inside a \
             streaming query; join the static tables in a view of their own first",
        )),
    }
}

fn refuse(msg: impl AsRef<str>) -> EngineError {
    EngineError::user(format!(
        "unsupported construct in streaming query: {}",
        msg.as_ref()
    ))
}

fn spark_name(t: JoinType) -> &'static str {
    match t {
        JoinType::Inner => "Inner",
        JoinType::Left => "LeftOuter",
        JoinType::Right => "RightOuter",
        JoinType::Full => "FullOuter",
        JoinType::LeftSemi => "LeftSemi",
        JoinType::LeftAnti => "LeftAnti",
        JoinType::RightSemi => "RightSemi",
        JoinType::RightAnti => "RightAnti",
        JoinType::LeftMark | JoinType::RightMark => "ExistenceJoin",
    }
}

/// Physical expressions of a join's equality keys.
type Keys = Vec<Arc<dyn PhysicalExpr>>;

/// The physical expressions of the equality keys of side `right` (0 = left), and their types.
fn key_exprs(j: &Join, ctx: &Ctx<'_>, right: bool) -> Result<(Keys, Vec<DataType>)> {
    let schema = if right {
        j.right.schema()
    } else {
        j.left.schema()
    };
    let mut exprs = Vec::new();
    let mut types = Vec::new();
    for (l, r) in &j.on {
        let e = if right { r } else { l };
        types.push(e.get_type(schema.as_ref())?);
        exprs.push(ctx.state.create_physical_expr(e.clone(), schema)?);
    }
    Ok((exprs, types))
}

/// The join condition besides the keys, over left ++ right columns.
fn filter_expr(j: &Join, ctx: &Ctx<'_>) -> Result<(Option<Arc<dyn PhysicalExpr>>, SchemaRef)> {
    let combined: DFSchema = j.left.schema().as_ref().clone().join(j.right.schema())?;
    let joined = nullable_schema(combined.as_arrow());
    let filter = match &j.filter {
        Some(f) => Some(ctx.state.create_physical_expr(f.clone(), &combined)?),
        None => None,
    };
    Ok((filter, joined))
}

fn stream_static(j: &Join, ctx: &mut Ctx<'_>, stream_left: bool) -> Result<Node> {
    use JoinType as T;
    let kind =
        match (j.join_type, stream_left) {
            (T::Inner, _) => StaticJoinKind::Inner,
            (T::Left, true) | (T::Right, false) => StaticJoinKind::Outer,
            (T::LeftSemi, true) | (T::RightSemi, false) => StaticJoinKind::Semi,
            (T::LeftAnti, true) | (T::RightAnti, false) => StaticJoinKind::Anti,
            (T::Full, _) => return Err(refuse(
                "FullOuter joins with streaming DataFrames/Datasets are not supported (Spark): \
                 the static side's unmatched rows would have to be emitted once the stream is \
                 complete, which it never is. Use a left outer join with the stream on the left",
            )),
            (t, _) => {
                let (stream_side, static_side) = match stream_left {
                    true => ("left", "right"),
                    false => ("right", "left"),
                };
                return Err(refuse(format!(
                    "{} join with a streaming DataFrame/Dataset on the {stream_side} and a static \
                 DataFrame/Dataset on the {static_side} is not supported (Spark): its \
                 preserved side is the static one. Put the stream on the preserved side, or use \
                 an inner join",
                    spark_name(t)
                )));
            }
        };
    if j.on.is_empty() {
        return Err(refuse(
            "a stream-static join needs at least one equality condition (a = b) between the \
             stream and the static table",
        ));
    }
    let (stream_plan, static_plan) = match stream_left {
        true => (&j.left, &j.right),
        false => (&j.right, &j.left),
    };
    let stream = translate(stream_plan, ctx)?;
    let mut found = None;
    let build = static_nodes(static_plan, ctx, &mut found)?;
    let (table, projection) =
        found.ok_or_else(|| refuse("the static side of a join reads no static table"))?;
    let (stream_keys, key_types) = key_exprs(j, ctx, !stream_left)?;
    let (static_keys, _) = key_exprs(j, ctx, stream_left)?;
    let (filter, joined) = filter_expr(j, ctx)?;
    let output = nullable_schema(j.schema.as_arrow());
    let refresh = table.refresh;
    let join = StaticJoin::new(StaticJoinSpec {
        kind,
        stream_left,
        stream_keys,
        static_keys,
        key_types,
        filter,
        joined,
        output,
        refresh,
    })?;
    Ok(Node::StaticJoin(Box::new(StaticJoinNode {
        stream,
        build,
        table,
        projection,
        build_schema: nullable_schema(static_plan.schema().as_arrow()),
        join,
    })))
}

/// The nodes of a join's static side, over the static table's rows (projected as its scan
/// says): filters and projections over one static table.
fn static_nodes(
    plan: &LogicalPlan,
    ctx: &Ctx<'_>,
    found: &mut Option<(Arc<StaticTable>, Option<Vec<usize>>)>,
) -> Result<Node> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let table = static_of_scan(scan).ok_or_else(|| {
                refuse(format!(
                    "table '{}' on the static side of a join is not a static table",
                    scan.table_name
                ))
            })?;
            if found.is_some() {
                return Err(refuse(
                    "the static side of a join reads two tables; join them in a view first",
                ));
            }
            *found = Some((table, scan.projection.clone()));
            Ok(Node::Input)
        }
        LogicalPlan::SubqueryAlias(a) => static_nodes(&a.input, ctx, found),
        LogicalPlan::Filter(f) => Ok(Node::Filter {
            input: Box::new(static_nodes(&f.input, ctx, found)?),
            predicate: ctx
                .state
                .create_physical_expr(f.predicate.clone(), f.input.schema())?,
        }),
        LogicalPlan::Projection(p) => Ok(Node::Project {
            input: Box::new(static_nodes(&p.input, ctx, found)?),
            exprs: p
                .expr
                .iter()
                .map(|e| {
                    Ok(ctx
                        .state
                        .create_physical_expr(e.clone(), p.input.schema())?)
                })
                .collect::<Result<Vec<_>>>()?,
            schema: nullable_schema(p.schema.as_arrow()),
        }),
        other => Err(refuse(format!(
            "the static side of a join may filter and project one static table; found {}",
            other.display()
        ))),
    }
}

fn stream_stream(j: &Join, ctx: &mut Ctx<'_>) -> Result<Node> {
    let kind = match j.join_type {
        JoinType::Inner => StreamJoinType::Inner,
        JoinType::Left => StreamJoinType::LeftOuter,
        JoinType::Right => StreamJoinType::RightOuter,
        JoinType::Full => StreamJoinType::FullOuter,
        JoinType::LeftSemi => StreamJoinType::LeftSemi,
        t => {
            return Err(refuse(format!(
                "{} joins between two streaming DataFrames/Datasets are not supported (Spark \
                 supports inner, left/right/full outer and left semi stream-stream joins)",
                spark_name(t)
            )))
        }
    };
    if ctx.mode != OutputMode::Append {
        return Err(refuse(format!(
            "Join between two streaming DataFrames/Datasets is not supported in {} output \
             mode, only in Append output mode (Spark): a joined row, once emitted, is final. \
             Write the join in append mode",
            match ctx.mode {
                OutputMode::Update => "Update",
                _ => "Complete",
            }
        )));
    }
    if j.on.is_empty() {
        return Err(refuse(
            "Stream-stream join without equality predicate is not supported (Spark): rows of \
             both streams would all have to meet. Add an equality condition between the \
             streams (a.key = b.key) besides the time range",
        ));
    }
    let before = ctx.stages.len();
    let left = translate(&j.left, ctx)?;
    let right = translate(&j.right, ctx)?;
    if ctx.stages.len() != before {
        return Err(refuse(
            "a stream-stream join of the output of another stateful operator (aggregation, \
             deduplication, join) is not supported; join the streams first, then aggregate",
        ));
    }
    let (lkeys, key_types) = key_exprs(j, ctx, false)?;
    let (rkeys, _) = key_exprs(j, ctx, true)?;
    let (filter, _) = filter_expr(j, ctx)?;
    let schemas = [j.left.schema(), j.right.schema()];

    // each side's watermarked column: its late rows are judged on it
    let late_col = |s: usize| -> Option<Column> {
        ctx.watermarked.iter().find_map(|(name, _)| {
            schemas[s]
                .qualified_field_with_unqualified_name(name)
                .ok()
                .map(|(q, f)| Column::new(q.cloned(), f.name()))
        })
    };
    let late_cols = [late_col(0), late_col(1)];

    // eviction: a watermarked key on both sides (window equality), else time-range terms
    let mut evict: [Option<(Expr, i64)>; 2] = [None, None];
    for (l, r) in &j.on {
        if ctx.watermark_of_expr(l).is_some() && ctx.watermark_of_expr(r).is_some() {
            for (s, e) in [(0, l), (1, r)] {
                let e = match e.get_type(schemas[s].as_ref())? {
                    DataType::Struct(_) => {
                        datafusion::functions::core::expr_fn::get_field(e.clone(), "end")
                    }
                    _ => e.clone(),
                };
                evict[s] = Some((e, 0));
            }
            break;
        }
    }
    if evict.iter().all(Option::is_none) {
        if let Some(f) = &j.filter {
            for (s, col, bound) in time_bounds(f, &schemas, &late_cols) {
                let off = crate::operators::join::bounds::state_watermark_offsets(&[bound]);
                let off = if s == 0 { off.0 } else { off.1 };
                if let Some(off) = off {
                    if evict[s].as_ref().is_none_or(|(_, o)| off > *o) {
                        evict[s] = Some((Expr::Column(col), off));
                    }
                }
            }
        }
    }
    let needs = |s: usize| kind.outer(s) || (kind == StreamJoinType::LeftSemi && s == 0);
    for (s, bound) in evict.iter().enumerate() {
        if needs(s) && bound.is_none() {
            let nullable = if s == 0 { "right" } else { "left" };
            return Err(refuse(format!(
                "Stream-stream {} join between two streaming DataFrame/Datasets is not \
                 supported without a watermark in the join keys, or a watermark on the \
                 nullable side and an appropriate range condition (Spark): the {} side's rows \
                 could never be emitted or forgotten. Add with_watermark on the {nullable} \
                 stream and a time range between the streams (e.g. {nullable}.t BETWEEN \
                 other.t AND other.t + INTERVAL 1 HOUR)",
                spark_name(j.join_type),
                if s == 0 { "left" } else { "right" },
            )));
        }
    }
    if evict.iter().any(Option::is_none) {
        tracing::warn!(
            "the stream-stream join keeps the {} side's rows forever (no watermark and time \
             range bound them): its state grows without limit",
            if evict[0].is_none() { "left" } else { "right" }
        );
    }
    let mut sides = Vec::with_capacity(2);
    for s in 0..2 {
        let schema = schemas[s];
        let late_time = match &late_cols[s] {
            Some(c) => Some(
                ctx.state
                    .create_physical_expr(Expr::Column(c.clone()), schema)?,
            ),
            None => None,
        };
        let evict = match &evict[s] {
            Some((e, off)) => Some((ctx.state.create_physical_expr(e.clone(), schema)?, *off)),
            None => None,
        };
        sides.push(JoinSide {
            schema: Arc::new(schema.as_arrow().clone()),
            keys: if s == 0 { lkeys.clone() } else { rkeys.clone() },
            late_time,
            evict,
        });
    }
    let right_side = sides.pop().ok_or_else(|| EngineError::bug("join sides"))?;
    let left_side = sides.pop().ok_or_else(|| EngineError::bug("join sides"))?;
    let in_schemas = [
        Arc::clone(&left_side.schema),
        Arc::clone(&right_side.schema),
    ];
    let op = JoinOp::new(kind, left_side, right_side, key_types, filter)?;
    let [ls, rs] = in_schemas;
    ctx.stages.push(Stage {
        op: Box::new(op),
        inputs: vec![
            Side {
                schema: ls,
                below: left,
            },
            Side {
                schema: rs,
                below: right,
            },
        ],
    });
    Ok(Node::Input)
}

/// The time-range terms of a join condition: `(side, that side's column, bound)` for each
/// comparison of a column of one side with a watermarked column of the other (each plus a
/// constant interval).
fn time_bounds(
    filter: &Expr,
    schemas: &[&Arc<DFSchema>; 2],
    late_cols: &[Option<Column>; 2],
) -> Vec<(usize, Column, TimeBound)> {
    let mut out = Vec::new();
    let mut add = |a: &Expr, op: &str, b: &Expr| {
        let (Some((ca, ka)), Some((cb, kb))) = (linear(a), linear(b)) else {
            return;
        };
        let (Some(sa), Some(sb)) = (side_of(&ca, schemas), side_of(&cb, schemas)) else {
            return;
        };
        if sa == sb {
            return;
        }
        let Some(bound) = bound_of((sa, ka), op, (sb, kb)) else {
            return;
        };
        // the side whose state this bound limits, and the other side's column must carry the
        // watermark (Spark: attributesWithEventWatermark)
        let (state_side, state_col, other_col, other_side) = match (bound.upper, sa) {
            (true, 0) | (false, 1) => (sa, ca, cb, sb),
            _ => (sb, cb, ca, sa),
        };
        if late_cols[other_side].as_ref().map(|c| &c.name) != Some(&other_col.name) {
            return;
        }
        out.push((state_side, state_col, bound));
    };
    for term in split_conjunction(filter) {
        match term {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let op = match op {
                    Operator::Lt => "<",
                    Operator::LtEq => "<=",
                    Operator::Gt => ">",
                    Operator::GtEq => ">=",
                    _ => continue,
                };
                add(left, op, right);
            }
            Expr::Between(b) if !b.negated => {
                add(&b.expr, ">=", &b.low);
                add(&b.expr, "<=", &b.high);
            }
            _ => {}
        }
    }
    out
}

fn side_of(c: &Column, schemas: &[&Arc<DFSchema>; 2]) -> Option<usize> {
    (0..2).find(|s| schemas[*s].has_column(c))
}

/// `column + constant µs` from an expression (`t`, `t + INTERVAL 1 HOUR`, `t - INTERVAL ..`,
/// through casts and aliases); `None` if it is not one.
fn linear(e: &Expr) -> Option<(Column, i64)> {
    fn go(e: &Expr) -> Option<(Option<Column>, i64)> {
        match e {
            Expr::Column(c) => Some((Some(c.clone()), 0)),
            Expr::Alias(a) => go(&a.expr),
            Expr::Cast(c) => go(&c.expr),
            Expr::TryCast(c) => go(&c.expr),
            Expr::Literal(v, _) => interval_us(v).map(|us| (None, us)),
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (lc, lk) = go(left)?;
                let (rc, rk) = go(right)?;
                match op {
                    Operator::Plus => match (lc, rc) {
                        (Some(_), Some(_)) => None,
                        (c, None) | (None, c) => Some((c, lk.checked_add(rk)?)),
                    },
                    Operator::Minus => match rc {
                        None => Some((lc, lk.checked_sub(rk)?)),
                        Some(_) => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        }
    }
    match go(e)? {
        (Some(c), k) => Some((c, k)),
        (None, _) => None,
    }
}

/// A fixed-length interval literal, µs (intervals with months have no fixed length).
fn interval_us(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            (i.days as i64 * 86_400_000_000).checked_add(i.nanoseconds / 1000)
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            Some(i.days as i64 * 86_400_000_000 + i.milliseconds as i64 * 1000)
        }
        ScalarValue::DurationMicrosecond(Some(us)) => Some(*us),
        ScalarValue::DurationMillisecond(Some(ms)) => ms.checked_mul(1000),
        ScalarValue::DurationSecond(Some(s)) => s.checked_mul(1_000_000),
        ScalarValue::DurationNanosecond(Some(ns)) => Some(ns / 1000),
        _ => None,
    }
}
