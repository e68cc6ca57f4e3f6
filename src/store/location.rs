//! Where the database lives: parsing `--database` / `DATABASE_URL`.
//!
//! Accepts `sqlite://PATH`, `sqlite:PATH`, `file:PATH` or a bare path (a
//! `?query` suffix is ignored, as sqlx-style URLs carry one). Refuses every
//! other scheme with a message naming what is supported, so that a
//! `postgres://` URL left over from the original design fails clearly.

use std::path::PathBuf;

/// The forms this product understands, for error messages and `--help`.
pub const SUPPORTED_FORMS: &str = "sqlite://PATH, sqlite:PATH, file:PATH or a plain file path";

/// Why a database location was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    #[error(
        "PostgreSQL URLs are not supported: this build stores images in SQLite; use {SUPPORTED_FORMS}"
    )]
    Postgres,
    #[error("unsupported database URL scheme `{0}:`; use {SUPPORTED_FORMS}")]
    UnsupportedScheme(String),
    #[error("the database location is empty; use {SUPPORTED_FORMS}")]
    Empty,
}

/// Turns a database URL or path into the SQLite file path it names.
pub fn parse_database_location(raw: &str) -> Result<PathBuf, LocationError> {
    let raw = raw.trim();
    let path = if let Some(rest) = raw.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = raw.strip_prefix("sqlite:") {
        rest
    } else if let Some(rest) = raw.strip_prefix("file:") {
        rest.strip_prefix("//").unwrap_or(rest)
    } else if let Some((scheme, _)) = raw.split_once("://") {
        return Err(match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => LocationError::Postgres,
            _ => LocationError::UnsupportedScheme(scheme.to_string()),
        });
    } else {
        raw
    };
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    if path.is_empty() {
        return Err(LocationError::Empty);
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_supported_form() {
        let cases = [
            ("gallery.db", "gallery.db"),
            ("/tmp/g.db", "/tmp/g.db"),
            ("sqlite://gallery.db", "gallery.db"),
            ("sqlite:///tmp/g.db", "/tmp/g.db"),
            ("sqlite:data/g.db", "data/g.db"),
            ("file:g.db", "g.db"),
            ("file:///tmp/g.db", "/tmp/g.db"),
            ("sqlite://g.db?mode=rwc", "g.db"),
        ];
        for (raw, want) in cases {
            assert_eq!(
                parse_database_location(raw),
                Ok(PathBuf::from(want)),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_postgres_with_a_message_naming_the_supported_forms() {
        for raw in ["postgres://u:p@localhost/db", "postgresql://localhost/db"] {
            let err = parse_database_location(raw).unwrap_err();
            assert_eq!(err, LocationError::Postgres);
            assert!(err.to_string().contains("sqlite://PATH"));
        }
    }

    #[test]
    fn refuses_other_schemes_and_empty_locations() {
        assert_eq!(
            parse_database_location("mysql://x/y"),
            Err(LocationError::UnsupportedScheme("mysql".into()))
        );
        assert_eq!(parse_database_location(""), Err(LocationError::Empty));
        assert_eq!(
            parse_database_location("sqlite://"),
            Err(LocationError::Empty)
        );
    }
}
