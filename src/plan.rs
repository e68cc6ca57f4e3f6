//! The plan: which children the stack has, their names, roles and ports,
//! and the CORS origins, derived from the flags in one place and shared by
//! the supervisor and the nginx config (`gallery-supervisor nginx-config`).

use std::net::IpAddr;

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
}

/// The name of API worker `k` (1-based).
pub fn api_name(k: usize) -> String {
    format!("api-{k}")
}

impl Plan {
    /// The plan the flags ask for.
    pub fn from_args(args: &PlanArgs) -> anyhow::Result<Plan> {
        let workers = args.api_workers;
        let api_ports = if args.api_base_port == 0 {
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
        })
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

    /// Children in start order: `static`, `api-1`..`api-N`, `nginx`.
    pub fn children(&self) -> Vec<ChildSpec> {
        let mut children = vec![ChildSpec {
            name: "static".into(),
            role: Role::Static,
            port: self.static_port,
        }];
        children.extend(
            self.api_ports
                .iter()
                .enumerate()
                .map(|(i, &port)| ChildSpec {
                    name: api_name(i + 1),
                    role: Role::Api,
                    port,
                }),
        );
        children.push(ChildSpec {
            name: "nginx".into(),
            role: Role::Nginx,
            port: self.front_port,
        });
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
}
