mod helpers;

mod api;
mod browser;
mod concurrency;
mod startup;
mod static_files;
