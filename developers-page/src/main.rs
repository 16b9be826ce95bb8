//! `cargo run -p developers-page`, then open http://127.0.0.1:3000.
//!
//! Settings (flag, or environment variable):
//!
//! * `--addr` / `DEVELOPERS_PAGE_ADDR`: where to listen (default `127.0.0.1:3000`);
//! * `--db` / `DEVELOPERS_PAGE_DB`: the SQLite file (default
//!   `developers-page.sqlite3` in the current directory).

use std::net::SocketAddr;
use std::process::ExitCode;

use developers_page::{AppState, Config, serve};

fn usage() -> &'static str {
    "usage: developers-page [--addr 127.0.0.1:3000] [--db developers-page.sqlite3]"
}

fn settings() -> Result<(SocketAddr, Config), String> {
    let mut addr =
        std::env::var("DEVELOPERS_PAGE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let mut config = Config::default();
    if let Ok(db) = std::env::var("DEVELOPERS_PAGE_DB") {
        config.database = db.into();
    }
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or(usage())?,
            "--db" => config.database = args.next().ok_or(usage())?.into(),
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    let addr = addr
        .parse()
        .map_err(|_| format!("the address must be like 127.0.0.1:3000, not {addr:?}"))?;
    Ok((addr, config))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (addr, config) = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("developers-page: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    let db = config.database.clone();
    let opened = tokio::task::spawn_blocking(move || AppState::open(&config, local)).await;
    let state = match opened {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => {
            developers_page::errors::log_error(&e);
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("developers-page: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Developers page for {}: http://{local}/",
        developers_page::ORG
    );
    println!("database: {}", db.display());
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        println!("stopping: letting deliveries in flight finish");
    };
    match serve(listener, state, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("developers-page: {e}");
            ExitCode::FAILURE
        }
    }
}
