//! The plan: which children the stack has, their names, roles and ports,
//! and the CORS origins, derived from the flags in one place and shared by
//! the supervisor and the nginx config (`gallery-supervisor nginx-config`).
//!
//! Across hosts it also holds what this host runs ([`HostRole`]), the
//! workers other hosts run that nginx balances over beside the local ones
//! ([`Upstream`], parsed from `--upstream HOST:PORT[,weight=N]`), how nginx
//! balances ([`LbMethod`]) and where POSTs go ([`Writes`]).

use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cli::PlanArgs;

/// What a child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Static,
    Api,
    Nginx,
}

/// One supervised child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSpec {
    pub name: String,
    pub role: Role,
    pub port: u16,
}

/// What this host runs of the stack (`--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HostRole {
    /// The static server, the API workers and nginx.
    #[default]
    All,
    /// Only the API workers, on --bind (no nginx, no static server), for
    /// a front on another host (its `--upstream`).
    Workers,
    /// nginx and the static server, in front of the --upstream workers (no
    /// database).
    Front,
}

impl HostRole {
    pub fn runs_nginx(self) -> bool {
        self != HostRole::Workers
    }
    pub fn runs_workers(self) -> bool {
        self != HostRole::Front
    }
}

/// How nginx spreads requests over the workers (`--lb-method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LbMethod {
    /// In turn, by weight (nginx's default).
    #[default]
    RoundRobin,
    /// To the worker with the fewest requests in flight, by weight.
    LeastConn,
    /// Each client address to one worker, by weight. nginx allows no
    /// backup servers with it: when every worker is marked down at once,
    /// the answer is a 502 until one is tried again (1 s).
    IpHash,
}

impl LbMethod {
    /// nginx refuses `backup` servers beside `ip_hash` (and `hash`, `random`).
    pub fn allows_backup_servers(self) -> bool {
        self != LbMethod::IpHash
    }
}

/// Where nginx sends POSTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// To the first local worker while it answers, the others as backups:
    /// one SQLite file has one write lock, and one worker committing every
    /// POST in groups outpaces several taking the lock in turn.
    OneWriter,
    /// Balanced like the reads: the database takes writers from many hosts
    /// (PostgreSQL), or the workers are on several hosts anyway.
    Balanced,
}

/// Whether `--database` names a server that many hosts' workers share
/// (`postgres://`, `postgresql://`) rather than a local SQLite file.
pub fn is_shared_database(database: &str) -> bool {
    let scheme = database.split_once("://").map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
}

/// The most weight one upstream server may have (`--upstream ...,weight=N`).
pub const MAX_WEIGHT: u16 = 1000;

/// A worker on another host in nginx's upstream: `HOST:PORT[,weight=N]`.
/// The host is an IPv4 address, an IPv6 address in brackets, or a host name
/// (nginx resolves it when it loads the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// As nginx writes it: IPv6 in brackets.
    pub host: String,
    pub port: u16,
    pub weight: u16,
}

impl Upstream {
    /// `HOST:PORT`, as nginx and a person write it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.address())?;
        if self.weight != 1 {
            write!(f, ",weight={}", self.weight)?;
        }
        Ok(())
    }
}

impl FromStr for Upstream {
    type Err = String;

    fn from_str(text: &str) -> Result<Upstream, String> {
        const FORM: &str = "HOST:PORT[,weight=N]";
        let mut parts = text.split(',');
        let address = parts.next().unwrap_or("").trim();
        let (host, port) = if let Some(rest) = address.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("{address:?} is not [IPV6]:PORT"))?;
            let ip: std::net::Ipv6Addr = ip
                .parse()
                .map_err(|_| format!("{ip:?} in {address:?} is not an IPv6 address"))?;
            (format!("[{ip}]"), port)
        } else {
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| format!("{address:?} has no port: say {FORM}"))?;
            if host.contains(':') {
                return Err(format!(
                    "{address:?}: write an IPv6 address in brackets, [ADDRESS]:PORT"
                ));
            }
            if !is_host_name(host) {
                return Err(format!(
                    "{host:?} is neither an IPv4 address nor a host name"
                ));
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
        };
        let mut weight = 1;
        for option in parts {
            let value = option.trim().strip_prefix("weight=").ok_or_else(|| {
                format!("{option:?} is not an option here (only weight=N: {FORM})")
            })?;
            weight = match value.parse::<u16>() {
                Ok(w) if (1..=MAX_WEIGHT).contains(&w) => w,
                _ => {
                    return Err(format!(
                        "weight {value:?} is not a number from 1 to {MAX_WEIGHT}"
                    ));
                }
            };
        }
        Ok(Upstream { host, port, weight })
    }
}

/// An IPv4 address or a DNS host name (letters, digits, hyphens, dots).
fn is_host_name(host: &str) -> bool {
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && !host.chars().all(|c| c.is_ascii_digit() || c == '.')
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The ports and address of the whole stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub bind: IpAddr,
    pub front_port: u16,
    pub static_port: u16,
    /// Port of worker k at index k - 1 (0 = any free port, chosen at bind).
    pub api_ports: Vec<u16>,
    /// Origins allowed to call the API from a browser (empty: any).
    pub cors_origins: Vec<String>,
    /// A user's nginx file included in the `server` block (absolute).
    pub nginx_include: Option<std::path::PathBuf>,
    /// What this host runs.
    pub role: HostRole,
    /// Workers of other hosts, in nginx's upstream after the local ones.
    pub remote: Vec<Upstream>,
    pub lb_method: LbMethod,
    pub writes: Writes,
    /// Put before every API worker's name (`--name-prefix`).
    pub worker_prefix: String,
}

/// The name of API worker `k` (1-based).
pub fn api_name(k: usize) -> String {
    format!("api-{k}")
}

/// The name of API worker `k` of a host whose names start with `prefix`.
pub fn worker_name(prefix: &str, k: usize) -> String {
    format!("{prefix}{}", api_name(k))
}

impl Plan {
    /// The plan the flags ask for.
    pub fn from_args(args: &PlanArgs) -> anyhow::Result<Plan> {
        let workers = args.api_workers;
        match args.role {
            HostRole::Front => anyhow::ensure!(
                !args.upstream.is_empty(),
                "--role front runs no API workers: name the workers it fronts with --upstream HOST:PORT (one per worker)"
            ),
            HostRole::Workers => anyhow::ensure!(
                args.upstream.is_empty(),
                "--role workers runs no nginx, so --upstream has no upstream to join: give it to the front's supervisor"
            ),
            HostRole::All => {}
        }
        let api_ports = if !args.role.runs_workers() {
            Vec::new()
        } else if args.api_base_port == 0 {
            vec![0; usize::from(workers)]
        } else {
            let last = u32::from(args.api_base_port) + u32::from(workers) - 1;
            anyhow::ensure!(
                last <= u32::from(u16::MAX),
                "--api-base-port {} leaves no room for {workers} workers (the last would be port {last})",
                args.api_base_port
            );
            (0..workers).map(|k| args.api_base_port + k).collect()
        };
        // A bad origin is one clear line now, not a worker crash loop later.
        crate::api::CorsPolicy::parse(&args.cors_origin)?;
        let nginx_include = match &args.nginx_include {
            Some(file) => {
                let absolute = file
                    .canonicalize()
                    .map_err(|e| anyhow::anyhow!("--nginx-include {}: {e}", file.display()))?;
                anyhow::ensure!(
                    absolute.is_file(),
                    "--nginx-include {}: not a file",
                    file.display()
                );
                Some(absolute)
            }
            None => None,
        };
        Ok(Plan {
            bind: args.bind,
            front_port: args.port,
            static_port: args.static_port,
            api_ports,
            cors_origins: args.cors_origin.clone(),
            nginx_include,
            role: args.role,
            remote: args.upstream.clone(),
            lb_method: args.lb_method,
            writes: if args.upstream.is_empty() {
                Writes::OneWriter
            } else {
                Writes::Balanced
            },
            worker_prefix: String::new(),
        })
    }

    /// The plan for workers on `database`: POSTs are balanced when it is a
    /// server every worker shares (PostgreSQL).
    pub fn with_database(mut self, database: &str) -> Plan {
        if is_shared_database(database) {
            self.writes = Writes::Balanced;
        }
        self
    }

    /// The plan with API workers named `PREFIXapi-K`.
    pub fn with_worker_prefix(mut self, prefix: &str) -> Plan {
        self.worker_prefix = prefix.to_string();
        self
    }

    /// Where the stack's servers are reached: the bind address, or loopback
    /// when binding every interface (`0.0.0.0`, `::`).
    pub fn connect_ip(&self) -> IpAddr {
        match self.bind {
            IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        }
    }

    /// Children in start order: `static`, `api-1`..`api-N`, `nginx`, those
    /// of them this host's role runs.
    pub fn children(&self) -> Vec<ChildSpec> {
        let mut children = Vec::new();
        if self.role.runs_nginx() {
            children.push(ChildSpec {
                name: "static".into(),
                role: Role::Static,
                port: self.static_port,
            });
        }
        children.extend(
            self.api_ports
                .iter()
                .enumerate()
                .map(|(i, &port)| ChildSpec {
                    name: worker_name(&self.worker_prefix, i + 1),
                    role: Role::Api,
                    port,
                }),
        );
        if self.role.runs_nginx() {
            children.push(ChildSpec {
                name: "nginx".into(),
                role: Role::Nginx,
                port: self.front_port,
            });
        }
        children
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let mut argv = vec!["gallery-supervisor"];
        argv.extend(args);
        Plan::from_args(&crate::cli::SupervisorArgs::parse_from(argv).stack.plan)
    }

    #[test]
    fn defaults_follow_the_spec_port_table() {
        let plan = plan(&[]).unwrap();
        assert_eq!((plan.front_port, plan.static_port), (8080, 8082));
        assert_eq!(plan.api_ports, [8083, 8084, 8085]);
        let names: Vec<_> = plan.children().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["static", "api-1", "api-2", "api-3", "nginx"]);
    }

    #[test]
    fn workers_are_numbered_from_the_base_port() {
        let plan = plan(&["--api-workers", "5", "--api-base-port", "9000"]).unwrap();
        assert_eq!(plan.api_ports, [9000, 9001, 9002, 9003, 9004]);
    }

    #[test]
    fn servers_bound_to_every_interface_are_reached_on_loopback() {
        assert_eq!(
            plan(&["--bind", "0.0.0.0"])
                .unwrap()
                .connect_ip()
                .to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            plan(&["--bind", "::"]).unwrap().connect_ip().to_string(),
            "::1"
        );
        assert_eq!(
            plan(&["--bind", "10.1.2.3"])
                .unwrap()
                .connect_ip()
                .to_string(),
            "10.1.2.3"
        );
    }

    #[test]
    fn a_bad_cors_origin_is_refused_up_front() {
        let err = plan(&["--cors-origin", "http://x/path"]).unwrap_err();
        assert!(err.to_string().contains("--cors-origin"), "{err}");
        assert!(plan(&["--cors-origin", "HTTP://Example.com:8082/"]).is_ok());
    }

    #[test]
    fn a_base_port_too_high_for_the_workers_is_refused() {
        let err = plan(&["--api-workers", "3", "--api-base-port", "65534"]).unwrap_err();
        assert!(err.to_string().contains("65536"), "{err}");
    }

    fn upstream(text: &str) -> Result<Upstream, String> {
        text.parse()
    }

    #[test]
    fn an_upstream_is_host_port_and_an_optional_weight() {
        let plain = upstream("127.0.0.2:9001").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.weight),
            ("127.0.0.2", 9001, 1)
        );
        assert_eq!(plain.to_string(), "127.0.0.2:9001");
        let weighted = upstream("Workers-B.example.com:80,weight=5").unwrap();
        assert_eq!(weighted.address(), "workers-b.example.com:80");
        assert_eq!(weighted.weight, 5);
        assert_eq!(weighted.to_string(), "workers-b.example.com:80,weight=5");
        let v6 = upstream("[::1]:9000,weight=1000").unwrap();
        assert_eq!((v6.address().as_str(), v6.weight), ("[::1]:9000", 1000));
    }

    #[test]
    fn a_bad_upstream_says_which_part_is_wrong() {
        for (text, needle) in [
            ("127.0.0.2", "has no port"),
            ("127.0.0.2:", "port \"\" is not a number"),
            ("127.0.0.2:0", "from 1 to 65535"),
            ("127.0.0.2:70000", "from 1 to 65535"),
            ("127.0.0.2:http", "from 1 to 65535"),
            (":9000", "neither an IPv4 address nor a host name"),
            ("bad_host:9000", "neither an IPv4 address nor a host name"),
            ("300.1.2.3:9000", "neither an IPv4 address nor a host name"),
            ("-x.example:9000", "neither an IPv4 address nor a host name"),
            ("::1:9000", "in brackets"),
            ("[::g]:9000", "not an IPv6 address"),
            ("[::1]9000", "not [IPV6]:PORT"),
            (
                "h:9000,weight=0",
                "weight \"0\" is not a number from 1 to 1000",
            ),
            ("h:9000,weight=1001", "from 1 to 1000"),
            ("h:9000,weight=", "from 1 to 1000"),
            ("h:9000,max_fails=1", "only weight=N"),
        ] {
            let error = upstream(text).unwrap_err();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }

    #[test]
    fn upstream_flags_reach_the_plan_and_make_posts_balanced() {
        let plan = plan(&[
            "--upstream",
            "127.0.0.2:9001",
            "--upstream",
            "b.example:9002,weight=3",
            "--lb-method",
            "least-conn",
        ])
        .unwrap();
        assert_eq!(plan.remote.len(), 2);
        assert_eq!(plan.remote[1].weight, 3);
        assert_eq!(plan.lb_method, LbMethod::LeastConn);
        assert_eq!(plan.writes, Writes::Balanced);
        let local = plan_ok(&[]);
        assert_eq!(
            (local.lb_method, local.writes),
            (LbMethod::RoundRobin, Writes::OneWriter)
        );
        assert_eq!(local.role, HostRole::All);
    }

    fn plan_ok(args: &[&str]) -> Plan {
        plan(args).unwrap()
    }

    #[test]
    fn a_postgres_database_balances_posts_and_a_sqlite_file_does_not() {
        for shared in ["postgres://u:p@db:5432/g", "POSTGRESQL://db/g"] {
            assert!(is_shared_database(shared), "{shared}");
            assert_eq!(plan_ok(&[]).with_database(shared).writes, Writes::Balanced);
        }
        for local in [
            "gallery.db",
            "sqlite://x.db",
            "file:x.db",
            "/srv/postgres://x",
        ] {
            assert!(!is_shared_database(local), "{local}");
            assert_eq!(plan_ok(&[]).with_database(local).writes, Writes::OneWriter);
        }
    }

    #[test]
    fn each_role_runs_its_share_of_the_children() {
        let names =
            |plan: &Plan| -> Vec<String> { plan.children().into_iter().map(|c| c.name).collect() };
        let workers =
            plan_ok(&["--role", "workers", "--api-workers", "2"]).with_worker_prefix("b-");
        assert_eq!(names(&workers), ["b-api-1", "b-api-2"]);
        let front = plan_ok(&["--role", "front", "--upstream", "127.0.0.2:9001"]);
        assert_eq!(names(&front), ["static", "nginx"]);
        assert!(front.api_ports.is_empty());
        let all = plan_ok(&["--upstream", "127.0.0.2:9001", "--api-workers", "1"]);
        assert_eq!(names(&all), ["static", "api-1", "nginx"]);
    }

    #[test]
    fn a_front_without_upstreams_and_workers_with_them_are_refused() {
        let err = plan(&["--role", "front"]).unwrap_err().to_string();
        assert!(
            err.contains("--role front") && err.contains("--upstream HOST:PORT"),
            "{err}"
        );
        let err = plan(&["--role", "workers", "--upstream", "h:1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--role workers runs no nginx"), "{err}");
    }
}
