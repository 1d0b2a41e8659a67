//! What the worker reports about its memory in `Hello` and heartbeats.
//!
//! - [`MemoryProbe::Real`]: the machine's total, used and available memory from
//!   `sysinfo` (refreshing reads `/proc/meminfo` on Linux: microseconds, done inline).
//! - [`MemoryProbe::Simulated`] (`--memory SIZE`): the configured total; used is the sum
//!   of the memory requests of the running attempts, and available is the whole total,
//!   because the coordinator already subtracts the requests of the gates it assigned
//!   (subtracting them here too would count them twice).
//!   Tests use it to get deterministic capacity; operators can use it to give a worker a
//!   budget smaller than its machine.

use crate::remote::RemoteWorkerError;

/// One heartbeat's memory figures, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemorySample {
    pub(crate) used: u64,
    pub(crate) available: u64,
}

/// The source of the memory figures.
pub(crate) enum MemoryProbe {
    /// Real figures; the `System` is kept to refresh only memory each time.
    Real(Box<sysinfo::System>),
    /// A configured total.
    Simulated { total: u64 },
}

impl MemoryProbe {
    /// A simulated probe when `total` is set, the real one otherwise.
    pub(crate) fn new(total: Option<u64>) -> Result<Self, RemoteWorkerError> {
        match total {
            Some(total) => Ok(Self::Simulated { total }),
            None => {
                let mut sys = sysinfo::System::new()
                    .map_err(|e| RemoteWorkerError::SystemInfo(e.to_string()))?;
                sys.refresh_memory();
                Ok(Self::Real(Box::new(sys)))
            }
        }
    }

    /// Total memory advertised in `Hello`.
    pub(crate) fn total(&self) -> u64 {
        match self {
            Self::Real(sys) => sys.total_memory(),
            Self::Simulated { total } => *total,
        }
    }

    /// Current figures; `requested` is the sum of the running attempts' memory requests.
    pub(crate) fn sample(&mut self, requested: u64) -> MemorySample {
        match self {
            Self::Real(sys) => {
                sys.refresh_memory();
                MemorySample {
                    used: sys.used_memory(),
                    available: sys.available_memory(),
                }
            }
            Self::Simulated { total } => MemorySample {
                used: requested.min(*total),
                available: *total,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_memory_reports_requests_as_used_and_the_total_as_available() {
        let mut probe = MemoryProbe::new(Some(1000)).expect("no io");
        assert_eq!(probe.total(), 1000);
        let s = probe.sample(300);
        assert_eq!((s.used, s.available), (300, 1000));
        let s = probe.sample(5000);
        assert_eq!((s.used, s.available), (1000, 1000));
    }

    #[test]
    fn real_memory_reports_the_machine() {
        let mut probe = MemoryProbe::new(None).expect("sysinfo works on this machine");
        let total = probe.total();
        assert!(total > 0);
        let s = probe.sample(u64::MAX);
        assert!(s.available <= total && s.used <= total, "{s:?} of {total}");
    }
}
