mod helpers;

mod admin;
mod admin_page;
mod api;
mod api_extensions;
mod browser;
mod concurrency;
mod foreman;
mod hardening;
mod operations;
mod run_script;
mod service;
mod startup;
mod static_files;
mod static_security;
mod supervisor;
mod supervisor_startup;
