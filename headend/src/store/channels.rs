//! The `channels` table: every channel, from headend.toml (`origin =
//! 'config'`, written again at every start) or added through the API
//! (`'api'`).

use super::{int, select, Result};
use crate::config::ChannelConfig;
use api::{Channel, ChannelOrigin};
use rusqlite::{params, Connection, OptionalExtension, ToSql};

/// Service ids as the `clear_services` column holds them: `1,2,3`.
fn services_to_sql(v: &[u16]) -> String {
    v.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn services_from_sql(s: &str) -> Vec<u16> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn origin_sql(o: ChannelOrigin) -> &'static str {
    match o {
        ChannelOrigin::Config => "config",
        ChannelOrigin::Api => "api",
    }
}

pub fn all(conn: &Connection) -> Result<Vec<Channel>> {
    select(
        conn,
        "SELECT service_id, name, product, ecm_pid, emm_pid, maturity, input, output, clear_services, origin FROM channels",
        [],
        |r| {
            Ok(Channel {
                service_id: r.get(0)?,
                name: r.get(1)?,
                product: r.get(2)?,
                ecm_pid: r.get(3)?,
                emm_pid: r.get(4)?,
                maturity: r.get(5)?,
                input: r.get(6)?,
                output: r.get(7)?,
                clear_services: services_from_sql(&r.get::<_, String>(8)?),
                origin: if r.get::<_, String>(9)? == "config" {
                    ChannelOrigin::Config
                } else {
                    ChannelOrigin::Api
                },
            })
        },
    )
}

/// The service ids and names of the channels taken from headend.toml.
pub fn from_config(conn: &Connection) -> Result<Vec<(u16, String)>> {
    select(
        conn,
        "SELECT service_id, name FROM channels WHERE origin = 'config'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// The service of another channel named `name`, if there is one.
pub fn other_named(conn: &Connection, name: &str, service: u16) -> Result<Option<u16>> {
    Ok(conn
        .query_row(
            "SELECT service_id FROM channels WHERE name = ?1 AND service_id != ?2",
            params![name, service],
            |r| r.get(0),
        )
        .optional()?)
}

/// Writes a channel of headend.toml, new or changed.
pub fn upsert_from_config(
    conn: &Connection,
    c: &ChannelConfig,
    product: u32,
    now_ms: u64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO channels (service_id, name, product, ecm_pid, emm_pid, maturity, input, output, created_ms, clear_services, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'config')
         ON CONFLICT(service_id) DO UPDATE SET name = ?2, product = ?3, ecm_pid = ?4,
           emm_pid = ?5, maturity = ?6, input = ?7, output = ?8, clear_services = ?10,
           origin = 'config'",
        params![
            c.service_id,
            c.name,
            product,
            c.ecm_pid,
            c.emm_pid,
            c.maturity,
            c.input,
            c.output,
            int(now_ms),
            services_to_sql(&c.clear_services),
        ],
    )?;
    Ok(())
}

/// Runs `sql` with a channel's fields as `?1` to `?9` (service_id, name,
/// product, ecm_pid, emm_pid, maturity, input, output, clear_services),
/// then `extra` from `?10` on.
fn execute_with(conn: &Connection, sql: &str, c: &Channel, extra: &[&dyn ToSql]) -> Result<()> {
    let clear = services_to_sql(&c.clear_services);
    let mut p: Vec<&dyn ToSql> = vec![
        &c.service_id,
        &c.name,
        &c.product,
        &c.ecm_pid,
        &c.emm_pid,
        &c.maturity,
        &c.input,
        &c.output,
        &clear,
    ];
    p.extend_from_slice(extra);
    conn.execute(sql, p.as_slice())?;
    Ok(())
}

pub fn insert(conn: &Connection, c: &Channel, now_ms: u64) -> Result<()> {
    execute_with(
        conn,
        "INSERT INTO channels (service_id, name, product, ecm_pid, emm_pid, maturity, input, output, clear_services, created_ms, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        c,
        &[&int(now_ms), &origin_sql(c.origin)],
    )
}

/// Writes every field of a channel but its service id and origin.
pub fn update(conn: &Connection, c: &Channel) -> Result<()> {
    execute_with(
        conn,
        "UPDATE channels SET name = ?2, product = ?3, ecm_pid = ?4, emm_pid = ?5, maturity = ?6,
           input = ?7, output = ?8, clear_services = ?9 WHERE service_id = ?1",
        c,
        &[],
    )
}

pub fn delete(conn: &Connection, service: u16) -> Result<()> {
    conn.execute(
        "DELETE FROM channels WHERE service_id = ?1",
        params![service],
    )?;
    Ok(())
}
