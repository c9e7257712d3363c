//! `herald files`: the managed-file-transfer audit log (XEP-0363 uploads) and purging.
//! Works whether or not the server is running: purged files are deleted from disk at
//! once, and their links answer 404 on the next request.

use std::sync::Arc;

use clap::Subcommand;
use herald_server::accounts::user_jid;
use herald_server::ext::stamp_from_micros;
use herald_server::ext::upload::{blob_store, purge, PurgeError};
use herald_server::Settings;
use herald_storage::{FileFilter, FileRecord, FileState, Storage};

/// Files purged per batch by `--user` / `--older-than`.
const BATCH: usize = 500;

#[derive(Subcommand)]
pub enum FilesCmd {
    /// List uploaded files, newest first.
    List {
        /// Only this user's uploads.
        #[arg(long, value_name = "JID")]
        user: Option<String>,
        /// Only uploads from this time on (2024-05-01 or 2024-05-01T12:00:00Z, UTC).
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// Include purged files.
        #[arg(long)]
        all: bool,
    },
    /// Show one file's record: upload, downloads, recipients.
    Show {
        /// A file id as `files list` prints it (ids from before 2026-11-24 may start
        /// with `-`, which is taken as part of the id).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Delete files (their content and links; the records stay): by id, all of a user's,
    /// or all older than some days (--user and --older-than combine).
    Purge {
        /// File ids. Ids from before 2026-11-24 may start with `-`: put `--` before them.
        ids: Vec<String>,
        #[arg(long, value_name = "JID", conflicts_with = "ids")]
        user: Option<String>,
        #[arg(long, value_name = "DAYS", conflicts_with = "ids")]
        older_than: Option<u32>,
    },
}

/// Micros since the epoch of `2024-05-01` (UTC midnight) or an RFC 3339 time.
fn parse_date(s: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let t = time::OffsetDateTime::parse(s.trim(), &Rfc3339)
        .ok()
        .or_else(|| {
            time::Date::parse(s.trim(), format_description!("[year]-[month]-[day]"))
                .ok()
                .map(|d| d.midnight().assume_utc())
        })
        .ok_or_else(|| {
            format!("--since {s:?}: expected a date such as 2024-05-01 or 2024-05-01T12:00:00Z")
        })?;
    Ok((t.unix_timestamp_nanos() / 1000) as i64)
}

fn now_micros() -> i64 {
    herald_server::ext::now_micros()
}

/// `1.5 MiB` for tables.
fn short_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

fn bare_jid(raw: &str, settings: &Settings) -> Result<String, String> {
    user_jid(raw, &settings.domains)
        .map(|j| j.as_str().to_string())
        .map_err(|e| e.to_string())
}

fn stamp(m: Option<i64>) -> String {
    m.map(stamp_from_micros).unwrap_or_else(|| "-".into())
}

pub async fn run(
    settings: &Settings,
    store: Arc<dyn Storage>,
    cmd: FilesCmd,
) -> Result<(), String> {
    match cmd {
        FilesCmd::List {
            user,
            since,
            limit,
            all,
        } => {
            let filter = FileFilter {
                uploader: user.map(|u| bare_jid(&u, settings)).transpose()?,
                since_micros: since.map(|s| parse_date(&s)).transpose()?,
                before_micros: None,
                include_purged: all,
                limit,
            };
            let files = store.list_files(&filter).await.map_err(|e| e.to_string())?;
            if files.is_empty() {
                println!("no files");
                return Ok(());
            }
            println!(
                "{:<22}  {:<24}  {:<9}  {:>9}  {:>4}  {:<30}  NAME",
                "ID", "CREATED (UTC)", "STATE", "SIZE", "DL", "UPLOADER"
            );
            for f in files {
                println!(
                    "{:<22}  {:<24}  {:<9}  {:>9}  {:>4}  {:<30}  {}",
                    f.id,
                    stamp_from_micros(f.created_micros),
                    f.state.as_str(),
                    short_size(f.size),
                    f.download_count,
                    f.uploader,
                    f.file_name.escape_debug()
                );
            }
        }
        FilesCmd::Show { id } => {
            let f = store
                .file(&id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no file with id {id:?}"))?;
            show(&f);
        }
        FilesCmd::Purge {
            ids,
            user,
            older_than,
        } => {
            let blobs = blob_store(settings);
            let perr = |e: PurgeError| e.to_string();
            if !ids.is_empty() {
                let mut missing = Vec::new();
                for id in &ids {
                    match purge(store.as_ref(), &blobs, id, "admin")
                        .await
                        .map_err(perr)?
                    {
                        None => missing.push(id.as_str()),
                        Some(FileState::Purged) => println!("{id}: already purged"),
                        Some(_) => println!("{id}: purged"),
                    }
                }
                if !missing.is_empty() {
                    return Err(format!("no file with id {}", missing.join(", ")));
                }
                return Ok(());
            }
            if user.is_none() && older_than.is_none() {
                return Err("files purge: give file ids, --user JID or --older-than DAYS".into());
            }
            let filter = FileFilter {
                uploader: user.map(|u| bare_jid(&u, settings)).transpose()?,
                since_micros: None,
                before_micros: older_than
                    .map(|d| now_micros() - i64::from(d) * 24 * 3600 * 1_000_000),
                include_purged: false,
                limit: BATCH,
            };
            let mut n = 0usize;
            loop {
                let batch = store.list_files(&filter).await.map_err(|e| e.to_string())?;
                if batch.is_empty() {
                    break;
                }
                for f in &batch {
                    purge(store.as_ref(), &blobs, &f.id, "admin")
                        .await
                        .map_err(perr)?;
                    n += 1;
                }
            }
            println!("purged {n} file{}", if n == 1 { "" } else { "s" });
        }
    }
    Ok(())
}

fn show(f: &FileRecord) {
    println!("id:            {}", f.id);
    println!("name:          {}", f.file_name.escape_debug());
    println!("size:          {} bytes ({})", f.size, short_size(f.size));
    println!(
        "content type:  {}",
        f.content_type.as_deref().unwrap_or("-")
    );
    println!("uploader:      {}", f.uploader);
    println!("state:         {}", f.state.as_str());
    println!("requested:     {}", stamp_from_micros(f.created_micros));
    println!("uploaded:      {}", stamp(f.uploaded_micros));
    println!("uploaded from: {}", f.upload_addr.as_deref().unwrap_or("-"));
    println!("sha-256:       {}", f.sha256.as_deref().unwrap_or("-"));
    println!(
        "expires:       {}",
        f.expires_micros
            .map(stamp_from_micros)
            .unwrap_or_else(|| "never".into())
    );
    if f.state == FileState::Purged {
        println!(
            "purged:        {} ({})",
            stamp(f.purged_micros),
            f.purge_reason.as_deref().unwrap_or("-")
        );
    }
    println!("recipients:    {}", f.recipients.len());
    for r in &f.recipients {
        println!(
            "  {}  {}  (sent by {})",
            stamp_from_micros(r.stamp_micros),
            r.jid,
            r.sender
        );
    }
    println!("downloads:     {}", f.download_count);
    for d in &f.downloads {
        println!(
            "  {}  {}{}",
            stamp_from_micros(d.stamp_micros),
            d.client_addr,
            d.downloader
                .as_deref()
                .map(|j| format!("  {j}"))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-02").unwrap(), 86_400_000_000);
        assert_eq!(parse_date("1970-01-01T00:00:01Z").unwrap(), 1_000_000);
        assert_eq!(parse_date("1970-01-01T01:00:00+01:00").unwrap(), 0);
        for bad in ["yesterday", "2024-13-01", "2024-05-01 12:00", ""] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(short_size(5), "5 B");
        assert_eq!(short_size(1536), "1.5 KiB");
        assert_eq!(short_size(50 * 1024 * 1024), "50.0 MiB");
    }
}
