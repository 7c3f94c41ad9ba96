//! `cairn pg …`: where objects live, PG states (`ls`, `query`, `stat`), and scrubs.

use clap::Subcommand;
use serde_json::json;

use cairn_client::Rados;
use cairn_common::pg_states::PgRow;
use cairn_common::placement::{all_pgs, PgId};
use cairn_common::proto::ScrubResult;

use super::emit;

/// How long `pg query` waits for the PG's primary.
const QUERY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
use crate::Format;

#[derive(Subcommand)]
pub enum PgCmd {
    /// The PG an object maps to and the OSDs serving it.
    Map { pool: String, object: String },
    /// PG states and space in one line.
    Stat,
    /// Every PG with its state, members, objects and scrub times; only those whose state
    /// contains STATE when given (e.g. `inconsistent`, `degraded`, `peering`).
    Ls { state: Option<String> },
    /// One PG in detail: the mons' row, and what its primary knows (the epoch it activated
    /// for, its version and log, what recovery still owes each member, why it waits).
    Query { pgid: PgId },
    /// Compare every member's objects (versions, sizes, attributes, omap).
    Scrub {
        /// A PG id (e.g. 1.1f) or `all`.
        target: String,
    },
    /// Scrub reading every byte: checksums, replica equality, erasure parity.
    DeepScrub { target: String },
    /// Deep scrub and rewrite every inconsistent copy from good ones.
    Repair { target: String },
}

pub async fn run(rados: &Rados, cmd: &PgCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        PgCmd::Map { pool, object } => {
            let (pg, acting) = rados.locate(pool, object)?;
            let epoch = rados.maps().osdmap.epoch;
            emit(
                format,
                &json!({ "epoch": epoch, "pgid": pg.to_string(), "acting": acting }),
                || format!("osdmap e{epoch} pg {pg} object '{object}' -> acting {acting:?}\n"),
            )
        }
        PgCmd::Stat => super::osd::pg_stat(rados.monc(), format).await,
        PgCmd::Ls { state } => {
            let rows: Vec<PgRow> = rados
                .monc()
                .pg_list()
                .await?
                .into_iter()
                .filter(|r| state.as_ref().is_none_or(|s| r.state.contains(s.as_str())))
                .collect();
            emit(format, &rows, || render_rows(&rows))
        }
        PgCmd::Query { pgid } => {
            let row = rados
                .monc()
                .pg_list()
                .await?
                .into_iter()
                .find(|r| r.pgid == *pgid)
                .ok_or_else(|| anyhow::anyhow!("pg {pgid} does not exist"))?;
            // What the primary itself knows; a PG whose primary does not answer still has
            // the mons' row.
            let primary = match tokio::time::timeout(QUERY_WAIT, rados.pg_query(*pgid)).await {
                Ok(Ok(detail)) => detail,
                Ok(Err(e)) => json!({ "error": e.to_string() }),
                Err(_) => {
                    json!({ "error": format!("the primary did not answer within {QUERY_WAIT:?}") })
                }
            };
            let out = json!({ "pg": row, "primary": primary });
            emit(format, &out, || {
                serde_json::to_string_pretty(&out).unwrap_or_default() + "\n"
            })
        }
        PgCmd::Scrub { target } => scrub(rados, target, false, false, format).await,
        PgCmd::DeepScrub { target } => scrub(rados, target, true, false, format).await,
        PgCmd::Repair { target } => scrub(rados, target, true, true, format).await,
    }
}

fn render_rows(rows: &[PgRow]) -> String {
    let mut out = format!(
        "{:<8} {:<40} {:>8} {:>6} {:<16} {:<20} {}\n",
        "PG", "STATE", "OBJECTS", "ERRORS", "ACTING", "LAST_DEEP_SCRUB", "PRIMARY"
    );
    for r in rows {
        let acting: Vec<String> = r
            .acting
            .iter()
            .map(|o| o.map_or("-".into(), |o| o.to_string()))
            .collect();
        out += &format!(
            "{:<8} {:<40} {:>8} {:>6} {:<16} {:<20} {}\n",
            r.pgid.to_string(),
            r.state,
            r.objects,
            r.scrub_errors,
            format!("[{}]", acting.join(",")),
            stamp(r.last_deep_scrub_ms),
            r.primary.map_or("-".into(), |p| format!("osd.{p}")),
        );
    }
    out
}

/// A scrub time as UTC `YYYY-MM-DDTHH:MM:SS`, or `never`.
fn stamp(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The calendar date of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Scrubs one PG or every PG, a line per PG as it completes.
async fn scrub(
    rados: &Rados,
    target: &str,
    deep: bool,
    repair: bool,
    format: Format,
) -> anyhow::Result<()> {
    let pgs: Vec<PgId> = if target == "all" {
        let maps = rados.maps();
        maps.osdmap
            .pools
            .iter()
            .flat_map(|(id, pool)| all_pgs(*id, pool))
            .collect()
    } else {
        vec![target.parse().map_err(|e: String| anyhow::anyhow!(e))?]
    };
    let what = match (deep, repair) {
        (_, true) => "repair",
        (true, false) => "deep-scrub",
        (false, false) => "scrub",
    };
    let mut results = Vec::new();
    for pg in pgs {
        let r: ScrubResult = rados.scrub(pg, deep, repair).await?;
        if format == Format::Plain {
            println!(
                "pg {pg} {what}: {} objects, {} errors, {} repaired",
                r.objects, r.errors, r.repaired
            );
            for line in &r.inconsistencies {
                println!("    {line}");
            }
        }
        results.push(json!({
            "pgid": pg.to_string(),
            "objects": r.objects,
            "errors": r.errors,
            "repaired": r.repaired,
            "inconsistencies": r.inconsistencies,
        }));
    }
    emit(format, &results, String::new)
}
