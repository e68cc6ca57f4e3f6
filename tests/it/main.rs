mod helpers;

mod api;
mod browser;
mod concurrency;
mod foreman;
mod hardening;
mod operations;
mod startup;
mod static_files;
mod supervisor;
mod supervisor_startup;
