//! The controller's metrics, and CPU and memory of the processes (from `/proc`).

use super::*;

// ---------------------------------------------------------------------------------------------
// controller metrics and memory

#[derive(Default, Debug)]
pub(crate) struct ControllerCounts {
    pub(crate) reconciliations: u64,
    pub(crate) issuances: u64,
    pub(crate) errors: u64,
    pub(crate) duration_sum: f64,
    pub(crate) duration_count: f64,
}

pub(crate) async fn scrape_controller(addr: &str) -> anyhow::Result<ControllerCounts> {
    let text = http_get(addr, "/metrics")
        .await
        .with_context(|| format!("reading the controller's /metrics at {addr}"))?;
    let mut c = ControllerCounts::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = match line.rsplit_once(' ') {
            Some((n, v)) => (n, v.parse::<f64>().unwrap_or(0.0)),
            None => continue,
        };
        let base = name.split('{').next().unwrap_or(name);
        match base {
            "tlsid_reconciliations_total" => c.reconciliations += value as u64,
            "tlsid_issuances_total" => c.issuances += value as u64,
            "tlsid_reconcile_errors_total" => c.errors += value as u64,
            "tlsid_reconcile_duration_seconds_sum" => c.duration_sum += value,
            "tlsid_reconcile_duration_seconds_count" => c.duration_count += value,
            _ => {}
        }
    }
    Ok(c)
}

/// A minimal HTTP/1.0 GET (the controller's metrics listener is plain HTTP on loopback).
pub(crate) async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    ensure!(
        head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200"),
        "{}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_string())
}

/// CPU seconds (user + system) a process has used. /proc reports clock ticks of USER_HZ = 100.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU used from the first identity create until all Ready, in cores (CPU seconds per second).
#[derive(Serialize, Deserialize, Debug, Default)]
pub(crate) struct CpuCores {
    pub(crate) apiserver: Option<f64>,
    pub(crate) etcd: Option<f64>,
    pub(crate) controller: Option<f64>,
    pub(crate) bench: Option<f64>,
    /// Every process on the machine (other work included).
    pub(crate) machine: Option<f64>,
    pub(crate) nproc: usize,
}

impl CpuCores {
    pub(crate) fn describe(&self) -> String {
        format!(
            "apiserver {} / etcd {} / controller {} / bench {} / whole machine {} of {}",
            fmt_cores(self.apiserver),
            fmt_cores(self.etcd),
            fmt_cores(self.controller),
            fmt_cores(self.bench),
            fmt_cores(self.machine),
            self.nproc
        )
    }
}

/// Busy (non-idle, non-iowait) CPU of the whole machine, from /proc/stat.
pub(crate) struct MachineCpu {
    pub(crate) busy0: Option<f64>,
    pub(crate) t0: Instant,
}

impl MachineCpu {
    pub(crate) fn busy() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let f: Vec<f64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let total: f64 = f.iter().take(8).sum();
        Some((total - f.get(3)? - f.get(4)?) / 100.0)
    }

    pub(crate) fn start() -> Self {
        Self {
            busy0: Self::busy(),
            t0: Instant::now(),
        }
    }

    pub(crate) fn cores(&self) -> Option<f64> {
        Some((Self::busy()? - self.busy0?) / self.t0.elapsed().as_secs_f64().max(1e-9))
    }
}

/// Cores a process used over an interval.
pub(crate) struct CpuMeter {
    pub(crate) pid: Option<u32>,
    pub(crate) cpu0: Option<f64>,
    pub(crate) t0: Instant,
}

impl CpuMeter {
    pub(crate) fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            cpu0: pid.and_then(cpu_secs),
            t0: Instant::now(),
        }
    }

    pub(crate) fn cores(&self) -> Option<f64> {
        let used = cpu_secs(self.pid?)? - self.cpu0?;
        Some(used / self.t0.elapsed().as_secs_f64().max(1e-9))
    }
}

pub(crate) fn fmt_cores(c: Option<f64>) -> String {
    c.map(|c| format!("{c:.2}")).unwrap_or_else(|| "?".into())
}

/// (VmHWM, VmRSS) of a process, MiB.
pub(crate) fn rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("controller pid {pid} is gone"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("bad {line}"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}
