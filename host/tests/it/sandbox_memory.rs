//! Host memory across runs of memory-hungry calls: sequential calls that each allocate
//! up to their limit, or return far more than the output limit, must not leave the
//! memory they touched committed.
//!
//! RSS is process-wide and the other tests of this binary run in parallel threads, so
//! the measurement runs in a process of its own: the test re-runs this binary for just
//! [`rss_probe`] (ignored otherwise) and checks that it passed.

use std::process::Command;
use std::time::Duration;

use maestro_core::call::Failure;
use maestro_host::sandbox::{CallContext, CallLimits};
use serde_json::json;

use crate::fixtures::{hostile, sandbox};

/// Calls in each run.
const CALLS: usize = 45;
const MIB: u64 = 1 << 20;

#[test]
fn sequential_memory_hungry_calls_leave_host_memory_near_its_baseline() {
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new(exe)
        .args(["--exact", "sandbox_memory::rss_probe", "--ignored", "--nocapture", "--test-threads=1"])
        .output()
        .expect("runs the probe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the probe failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the probe did not run:\n{stdout}");
    // Shown with --nocapture: the figures behind the bounds.
    if let Some(at) = stdout.find("rss baseline") {
        println!("{}", stdout[at..].lines().next().unwrap_or_default());
    }
}

/// This process's resident set (`VmRSS`), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures RSS: run alone, in its own process, by the test above"]
async fn rss_probe() {
    let plugin = hostile().await;
    let hog =
        CallContext { limits: CallLimits { memory_bytes: 32 << 20, ..CallLimits::default() }, ..Default::default() };
    let big_output = CallContext {
        limits: CallLimits { memory_bytes: 128 << 20, output_bytes: 1 << 20, ..CallLimits::default() },
        ..Default::default()
    };
    let run = |tool: &'static str, args: serde_json::Value, context: CallContext| {
        let plugin = plugin.clone();
        async move { sandbox().call_tool(&plugin, tool, args.to_string(), &context).await.result }
    };
    // One of each first: compiled code, runtime threads and allocator arenas in place.
    run("hog", json!({}), hog.clone()).await.expect_err("refused");
    run("huge_output", json!({ "bytes": 50 << 20 }), big_output.clone()).await.expect_err("refused");
    let baseline = rss();

    let mut peak_hogs = baseline;
    for _ in 0..CALLS {
        let result = run("hog", json!({}), hog.clone()).await;
        assert_eq!(result.expect_err("hogs"), Failure::MemoryLimit(32 << 20));
        peak_hogs = peak_hogs.max(rss());
    }
    let mut peak_outputs = baseline;
    for _ in 0..CALLS {
        match run("huge_output", json!({ "bytes": 50 << 20 }), big_output.clone()).await {
            Err(Failure::OutputTooLarge { size, limit }) => assert_eq!((size, limit), (50 << 20, 1 << 20)),
            other => panic!("{other:?}"),
        }
        peak_outputs = peak_outputs.max(rss());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss();
    let mib = |bytes: u64| bytes as f64 / MIB as f64;
    println!(
        "rss baseline {:.0} MiB; peak after {CALLS} hogs at 32 MiB +{:.0} MiB; peak after {CALLS} 50 MiB outputs \
         +{:.0} MiB; idle +{:.0} MiB",
        mib(baseline),
        mib(peak_hogs.saturating_sub(baseline)),
        mib(peak_outputs.saturating_sub(baseline)),
        mib(idle.saturating_sub(baseline)),
    );
    // Generous bounds (RSS is noisy), far below the ~500 MiB that batched decommits
    // left behind: each call's memory is given back when it ends.
    assert!(peak_hogs - baseline <= 3 * 32 * MIB, "hogs raised RSS by {:.0} MiB", mib(peak_hogs - baseline));
    assert!(
        peak_outputs - baseline <= 2 * 128 * MIB,
        "huge outputs raised RSS by {:.0} MiB",
        mib(peak_outputs - baseline)
    );
    assert!(idle.saturating_sub(baseline) <= 32 * MIB, "idle RSS stayed {:.0} MiB up", mib(idle - baseline));
}
