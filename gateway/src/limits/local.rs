//! `scope: gateway` counters: in this process, under one mutex, no I/O.

use super::{Exceeded, LIMIT_UNAVAILABLE, Subject, Want, window_index};
use std::collections::HashMap;
use std::sync::Mutex;

/// Most counters kept; past it, counters of windows that have ended are dropped first.
const MAX_COUNTERS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tenant: String,
    agent: String,
    tool: String,
    /// `calls` for a rate limit, `param:<name>` for a budget.
    what: String,
    window_seconds: u64,
}

impl Key {
    fn of(who: Subject<'_>, want: &Want) -> Self {
        Self {
            tenant: who.tenant.to_owned(),
            agent: who.agent.to_owned(),
            tool: who.tool.to_owned(),
            what: want.what(),
            window_seconds: want.window_seconds,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    /// `now / window_seconds` of the window counted.
    index: i64,
    value: f64,
}

/// The counters this gateway keeps on its own.
#[derive(Debug, Default)]
pub struct LocalCounters {
    counters: Mutex<HashMap<Key, Window>>,
}

impl LocalCounters {
    /// Checks every counter of `wants`; counts all of them only if all pass.
    pub(super) fn admit(&self, who: Subject<'_>, wants: &[Want], now: i64) -> Result<(), Exceeded> {
        if wants.is_empty() {
            return Ok(());
        }
        let keys: Vec<Key> = wants.iter().map(|w| Key::of(who, w)).collect();
        let Ok(mut counters) = self.counters.lock() else {
            return Err(Exceeded {
                code: LIMIT_UNAVAILABLE,
                message: "the gateway's limit counters are unavailable".to_owned(),
            });
        };
        for (want, key) in wants.iter().zip(&keys) {
            let used = counters
                .get(key)
                .filter(|w| w.index == want.index)
                .map_or(0.0, |w| w.value);
            if used + want.add > want.max() {
                return Err(want.exceeded(who, used));
            }
        }
        if counters.len() >= MAX_COUNTERS {
            counters.retain(|k, w| w.index >= window_index(now, k.window_seconds));
        }
        for (want, key) in wants.iter().zip(keys) {
            let w = counters.entry(key).or_insert(Window {
                index: want.index,
                value: 0.0,
            });
            if w.index != want.index {
                *w = Window {
                    index: want.index,
                    value: 0.0,
                };
            }
            w.value += want.add;
        }
        Ok(())
    }

    /// Takes back what [`LocalCounters::admit`] counted for `wants` (a global limit then
    /// refused the call), as long as the window is the same.
    pub(super) fn release(&self, who: Subject<'_>, wants: &[Want]) {
        if wants.is_empty() {
            return;
        }
        let Ok(mut counters) = self.counters.lock() else {
            return;
        };
        for want in wants {
            if let Some(w) = counters.get_mut(&Key::of(who, want))
                && w.index == want.index
            {
                w.value = (w.value - want.add).max(0.0);
            }
        }
    }
}
