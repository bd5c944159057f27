//! `pidbusctl`: inspect a pidbus bus from the command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pidbus::PeerInfo;
use serde::Serialize;

/// Inspect a pidbus bus: who am I, who is connected.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Bus socket to connect to (default: $PIDBUS_ADDRESS, else the session bus).
    #[arg(long, global = true, value_name = "PATH")]
    address: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the identity the broker verified for this process.
    Whoami,
    /// List every connected peer with its verified identity.
    Peers,
}

/// A peer as printed: the unique id and the identity's fields side by side.
#[derive(Debug, Serialize)]
struct PeerView<'a> {
    id: String,
    pid: u32,
    uid: u32,
    gid: u32,
    groups: &'a [u32],
    pidfs_id: Option<u64>,
    start_time: Option<u64>,
    boot_id: &'a str,
    exe: Option<&'a str>,
    unit: Option<&'a str>,
    cgroup: Option<&'a str>,
    label: Option<&'a str>,
}

impl<'a> From<&'a PeerInfo> for PeerView<'a> {
    fn from(peer: &'a PeerInfo) -> Self {
        let i = &peer.identity;
        PeerView {
            id: peer.id.to_string(),
            pid: i.pid,
            uid: i.uid,
            gid: i.gid,
            groups: &i.groups,
            pidfs_id: i.pidfs_id,
            start_time: i.start_time,
            boot_id: &i.boot_id,
            exe: i.exe.as_deref(),
            unit: i.unit.as_deref(),
            cgroup: i.cgroup.as_deref(),
            label: i.label.as_deref(),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pidbusctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let address = args
        .address
        .clone()
        .unwrap_or_else(pidbus_protocol::address::default_client_address);
    let bus = pidbus::blocking::Connection::connect(&address)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        Command::Whoami => {
            let me = bus.whoami()?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &PeerView::from(&me))?;
                writeln!(out)?;
            } else {
                print_identity(&mut out, &me)?;
            }
        }
        Command::Peers => {
            let peers = bus.peers()?;
            if args.json {
                let views: Vec<PeerView<'_>> = peers.iter().map(PeerView::from).collect();
                serde_json::to_writer_pretty(&mut out, &views)?;
                writeln!(out)?;
            } else {
                print_peer_table(&mut out, &peers)?;
            }
        }
    }
    Ok(())
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn print_identity(out: &mut impl Write, peer: &PeerInfo) -> std::io::Result<()> {
    let i = &peer.identity;
    let groups: Vec<String> = i.groups.iter().map(u32::to_string).collect();
    let rows = [
        ("id", peer.id.to_string()),
        ("pid", i.pid.to_string()),
        ("uid", i.uid.to_string()),
        ("gid", i.gid.to_string()),
        (
            "groups",
            if groups.is_empty() {
                "-".to_owned()
            } else {
                groups.join(",")
            },
        ),
        ("pidfs_id", or_dash(i.pidfs_id)),
        ("start_time", or_dash(i.start_time)),
        ("boot_id", i.boot_id.clone()),
        ("exe", or_dash(i.exe.as_deref())),
        ("unit", or_dash(i.unit.as_deref())),
        ("cgroup", or_dash(i.cgroup.as_deref())),
        ("label", or_dash(i.label.as_deref())),
    ];
    for (key, value) in rows {
        writeln!(out, "{key:<10}  {value}")?;
    }
    Ok(())
}

fn print_peer_table(out: &mut impl Write, peers: &[PeerInfo]) -> std::io::Result<()> {
    let header = ["ID", "PID", "UID", "GID", "PIDFS_ID", "UNIT", "EXE"];
    let rows: Vec<[String; 7]> = peers
        .iter()
        .map(|p| {
            let i = &p.identity;
            [
                p.id.to_string(),
                i.pid.to_string(),
                i.uid.to_string(),
                i.gid.to_string(),
                or_dash(i.pidfs_id),
                or_dash(i.unit.as_deref()),
                or_dash(i.exe.as_deref()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}
