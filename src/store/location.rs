//! Where the database lives: parsing `--database` / `DATABASE_URL`.
//!
//! Two kinds: an SQLite file (`sqlite://PATH`, `sqlite:PATH`, `file:PATH` or
//! a bare path; a `?query` suffix is ignored, as sqlx-style URLs carry one)
//! or a PostgreSQL server (`postgres://` or `postgresql://`, parsed by the
//! `postgres` crate, so every URL it takes is taken). Every other scheme is
//! refused with a message naming what is supported.
//!
//! A PostgreSQL URL may hold a password, so [`PostgresUrl`] never shows it:
//! its `Display` and `Debug` are rebuilt from the parsed parts without the
//! password or any other query parameter, and the text as given is handed
//! out only by [`PostgresUrl::with_password`], for a child's environment.

use std::path::PathBuf;

/// The forms this product understands, for error messages and `--help`.
pub const SUPPORTED_FORMS: &str = "sqlite://PATH, sqlite:PATH, file:PATH, a plain file path, or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE";

/// Why a database location was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    #[error("unsupported database URL scheme `{0}:`; use {SUPPORTED_FORMS}")]
    UnsupportedScheme(String),
    #[error("the database location is empty; use {SUPPORTED_FORMS}")]
    Empty,
    /// The `postgres` crate's reason (it names an option, never a value).
    #[error(
        "not a usable PostgreSQL URL ({0}); use postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    )]
    BadPostgresUrl(String),
}

/// A database: an SQLite file or a PostgreSQL server.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(PostgresUrl),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => url.fmt(f),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Location::Postgres(url) => f.debug_tuple("Postgres").field(url).finish(),
        }
    }
}

impl From<&std::path::Path> for Location {
    fn from(path: &std::path::Path) -> Self {
        Location::Sqlite(path.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Self {
        Location::Sqlite(path.clone())
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Self {
        Location::Sqlite(path)
    }
}

impl From<&Location> for Location {
    fn from(location: &Location) -> Self {
        location.clone()
    }
}

/// A PostgreSQL connection URL, parsed; shown without its password.
#[derive(Clone)]
pub struct PostgresUrl {
    /// The text as given (it may hold a password): never displayed.
    given: String,
    config: std::sync::Arc<postgres::Config>,
}

impl PartialEq for PostgresUrl {
    fn eq(&self, other: &Self) -> bool {
        self.given == other.given
    }
}

impl Eq for PostgresUrl {}

/// PostgreSQL's port when a URL names none.
const DEFAULT_PORT: u16 = 5432;

impl PostgresUrl {
    fn parse(given: &str, scheme_length: usize) -> Result<Self, LocationError> {
        // The postgres crate takes the scheme in lower case only.
        let normalised = format!(
            "{}{}",
            given[..scheme_length].to_ascii_lowercase(),
            &given[scheme_length..]
        );
        let config: postgres::Config = normalised
            .parse()
            .map_err(|e: postgres::Error| LocationError::BadPostgresUrl(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(LocationError::BadPostgresUrl("no host".into()));
        }
        Ok(PostgresUrl {
            given: normalised,
            config: std::sync::Arc::new(config),
        })
    }

    /// The parsed connection settings (password included).
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// The URL as given, password included: only for a child process's
    /// environment, never for an argument list, a log or a message.
    pub fn with_password(&self) -> &str {
        &self.given
    }

    /// Where the server is: `HOST:PORT` (comma-separated when several).
    pub fn server(&self) -> String {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports
                    .get(i)
                    .or(ports.first())
                    .copied()
                    .unwrap_or(DEFAULT_PORT);
                match host {
                    postgres::config::Host::Tcp(name) if name.contains(':') => {
                        format!("[{name}]:{port}")
                    }
                    postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                    postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The database name, if the URL gives one (else the user's name).
    pub fn database(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// The user, if the URL gives one.
    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }
}

/// `postgres://USER@HOST:PORT/DATABASE`: no password, no query.
impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("postgres://")?;
        if let Some(user) = self.user() {
            write!(f, "{user}@")?;
        }
        f.write_str(&self.server())?;
        if let Some(database) = self.database() {
            write!(f, "/{database}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Turns a database URL or path into the database it names.
pub fn parse_database_location(raw: &str) -> Result<Location, LocationError> {
    let raw = raw.trim();
    let path = if let Some(rest) = raw.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = raw.strip_prefix("sqlite:") {
        rest
    } else if let Some(rest) = raw.strip_prefix("file:") {
        rest.strip_prefix("//").unwrap_or(rest)
    } else if let Some((scheme, _)) = raw.split_once("://") {
        return match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => {
                PostgresUrl::parse(raw, scheme.len()).map(Location::Postgres)
            }
            _ => Err(LocationError::UnsupportedScheme(scheme.to_string())),
        };
    } else {
        raw
    };
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    if path.is_empty() {
        return Err(LocationError::Empty);
    }
    Ok(Location::Sqlite(PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_supported_sqlite_form() {
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
                Ok(Location::Sqlite(PathBuf::from(want))),
                "{raw}"
            );
        }
    }

    fn postgres(raw: &str) -> PostgresUrl {
        match parse_database_location(raw) {
            Ok(Location::Postgres(url)) => url,
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn accepts_postgres_and_postgresql_urls_and_never_shows_the_password() {
        let url = postgres("postgres://gallery:s3cret@db.example:6543/pics?sslmode=disable");
        assert_eq!(url.to_string(), "postgres://gallery@db.example:6543/pics");
        assert_eq!(
            format!("{url:?}"),
            "\"postgres://gallery@db.example:6543/pics\""
        );
        assert_eq!(url.server(), "db.example:6543");
        assert_eq!(url.config().get_password(), Some(&b"s3cret"[..]));
        assert!(url.with_password().contains("s3cret"));
        let location = Location::Postgres(url);
        assert!(!location.to_string().contains("s3cret"));
        assert!(!format!("{location:?}").contains("s3cret"));

        let url = postgres("PostgreSQL://u@127.0.0.1/g");
        assert_eq!(url.to_string(), "postgres://u@127.0.0.1:5432/g");
        // A password given as a query parameter is not shown either.
        let url = postgres("postgresql://u@[::1]:5000/g?password=hidden");
        assert_eq!(url.to_string(), "postgres://u@[::1]:5000/g");
    }

    #[test]
    fn refuses_bad_postgres_urls_without_echoing_them() {
        for raw in [
            "postgres://u:pw-here@host:notaport/db",
            "postgres:///db?password=pw-here",
        ] {
            let err = parse_database_location(raw).unwrap_err();
            assert!(
                matches!(err, LocationError::BadPostgresUrl(_)),
                "{raw}: {err}"
            );
            assert!(!err.to_string().contains("pw-here"), "{err}");
        }
    }

    #[test]
    fn refuses_other_schemes_and_empty_locations() {
        let err = parse_database_location("mysql://x/y").unwrap_err();
        assert_eq!(err, LocationError::UnsupportedScheme("mysql".into()));
        assert!(err.to_string().contains("postgres://USER"), "{err}");
        assert_eq!(parse_database_location(""), Err(LocationError::Empty));
        assert_eq!(
            parse_database_location("sqlite://"),
            Err(LocationError::Empty)
        );
    }
}
