//! SQL front end: Spark's window syntax on top of DataFusion's SQL planner.
//!
//! `SELECT window.start, action, count(*) FROM events GROUP BY window(event_time, '1 minute'), action`
//! names `window` — the grouping expression's output — as if it were a column. DataFusion would
//! look for a table called `window`. Before planning, the parsed statement is rewritten: in every
//! SELECT whose GROUP BY has a `window(...)` (or `session_window(...)`) call, the identifier
//! `window` becomes that call and `window.start` becomes `get_field(<call>, 'start')` (aliased
//! as Spark names it). CTEs, FROM-subqueries and set operations are visited too.

use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, FunctionArg, FunctionArgExpr, FunctionArguments,
};
use datafusion::sql::sqlparser::ast::{
    Expr, GroupByExpr, Ident, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use std::ops::ControlFlow;

use crate::error::{EngineError, Result};

/// Rewrites Spark window references in a statement (see the module docs).
pub fn rewrite_statement(stmt: &mut Statement) -> Result<()> {
    if let Statement::Query(q) = stmt {
        rewrite_query(q)?;
    }
    Ok(())
}

fn rewrite_query(q: &mut Query) -> Result<()> {
    if let Some(with) = &mut q.with {
        for cte in &mut with.cte_tables {
            rewrite_query(&mut cte.query)?;
        }
    }
    rewrite_set_expr(&mut q.body)
}

fn rewrite_set_expr(s: &mut SetExpr) -> Result<()> {
    match s {
        SetExpr::Select(sel) => rewrite_select(sel),
        SetExpr::Query(q) => rewrite_query(q),
        SetExpr::SetOperation { left, right, .. } => {
            rewrite_set_expr(left)?;
            rewrite_set_expr(right)
        }
        _ => Ok(()),
    }
}

fn rewrite_table_factor(t: &mut TableFactor) -> Result<()> {
    if let TableFactor::Derived { subquery, .. } = t {
        rewrite_query(subquery)?;
    }
    Ok(())
}

/// The window function a GROUP BY item calls, if any: ("window" | "session_window", the call).
fn window_call(e: &Expr) -> Option<(&'static str, Expr)> {
    let Expr::Function(f) = e else { return None };
    let name = f.name.to_string().to_ascii_lowercase();
    match name.as_str() {
        "window" => Some(("window", e.clone())),
        "session_window" => Some(("session_window", e.clone())),
        _ => None,
    }
}

fn field_access(call: &Expr, field: &str) -> Result<Expr> {
    let mut e = Parser::new(&GenericDialect {})
        .try_with_sql(&format!("get_field(x, '{}')", field.replace('\'', "''")))
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| EngineError::bug(format!("building get_field: {e}")))?;
    if let Expr::Function(f) = &mut e {
        if let FunctionArguments::List(list) = &mut f.args {
            if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(first))) = list.args.first_mut()
            {
                *first = call.clone();
            }
        }
    }
    Ok(e)
}

fn rewrite_select(sel: &mut Select) -> Result<()> {
    for twj in &mut sel.from {
        rewrite_table_factor(&mut twj.relation)?;
        for j in &mut twj.joins {
            rewrite_table_factor(&mut j.relation)?;
        }
    }
    let GroupByExpr::Expressions(exprs, _) = &sel.group_by else {
        return Ok(());
    };
    let Some((name, call)) = exprs.iter().find_map(window_call) else {
        return Ok(());
    };
    let mut failure = None;
    let mut replace = |e: &mut Expr| {
        let _ = visit_expressions_mut(e, |x: &mut Expr| {
            let new = match x {
                Expr::Identifier(id) if id.value.eq_ignore_ascii_case(name) => {
                    Some(Ok(call.clone()))
                }
                Expr::CompoundIdentifier(parts)
                    if parts.len() == 2 && parts[0].value.eq_ignore_ascii_case(name) =>
                {
                    Some(field_access(&call, &parts[1].value))
                }
                _ => None,
            };
            match new {
                Some(Ok(n)) => *x = n,
                Some(Err(e)) => failure = Some(e),
                None => {}
            }
            ControlFlow::<()>::Continue(())
        });
    };
    for item in &mut sel.projection {
        match item {
            SelectItem::UnnamedExpr(e) => {
                let alias = match e {
                    Expr::Identifier(id) if id.value.eq_ignore_ascii_case(name) => {
                        Some(Ident::new(name))
                    }
                    Expr::CompoundIdentifier(parts)
                        if parts.len() == 2 && parts[0].value.eq_ignore_ascii_case(name) =>
                    {
                        Some(parts[1].clone())
                    }
                    _ => None,
                };
                let mut expr = e.clone();
                replace(&mut expr);
                *item = match alias {
                    Some(alias) => SelectItem::ExprWithAlias { expr, alias },
                    None => SelectItem::UnnamedExpr(expr),
                };
            }
            SelectItem::ExprWithAlias { expr, .. } => replace(expr),
            _ => {}
        }
    }
    if let Some(h) = &mut sel.having {
        replace(h);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
