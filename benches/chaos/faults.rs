//! The faults

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    RedisKillRestart,
    RedisKillFailover,
    SentinelFailover,
    ClientPause,
    GatewayKill,
    Kube500,
    Kube429,
    KubeDown,
    KubeCutWatches,
}

pub(crate) const STATE_FAULTS: [Kind; 5] =
    [Kind::RedisKillRestart, Kind::RedisKillFailover, Kind::SentinelFailover, Kind::ClientPause, Kind::GatewayKill];
pub(crate) const KUBE_FAULTS: [Kind; 4] = [Kind::Kube500, Kind::Kube429, Kind::KubeDown, Kind::KubeCutWatches];

impl Kind {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::RedisKillRestart => "redis primary kill -9, restarted at once (comes back empty)",
            Kind::RedisKillFailover => "redis primary kill -9, restarted after Sentinel failed over",
            Kind::SentinelFailover => "SENTINEL FAILOVER",
            Kind::ClientPause => "CLIENT PAUSE of the primary",
            Kind::GatewayKill => "gateway replica SIGKILL and restart",
            Kind::Kube500 => "Kubernetes API: burst of 500s",
            Kind::Kube429 => "Kubernetes API: burst of 429s",
            Kind::KubeDown => "Kubernetes API down (503, watches cut)",
            Kind::KubeCutWatches => "Kubernetes API: watches cut",
        }
    }
}

/// A fault that happened, from its start to when the system was whole again.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) kind: Kind,
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    /// The replica a gateway SIGKILL killed, and when its process was dead (reaped):
    /// the one fault that can lose counts, those its status writer held.
    pub(crate) killed: Option<(usize, Instant)>,
    pub(crate) detail: String,
}

/// Which faults come next: first every kind once in a shuffled order (so a short run
/// sees each), then kinds at random.
pub(crate) struct Schedule {
    pub(crate) rng: Rng,
    pub(crate) kinds: &'static [Kind],
    pub(crate) first: Vec<Kind>,
}

impl Schedule {
    pub(crate) fn new(mut rng: Rng, kinds: &'static [Kind]) -> Schedule {
        let mut first = kinds.to_vec();
        rng.shuffle(&mut first);
        first.reverse();
        Schedule { rng, kinds, first }
    }

    pub(crate) fn next(&mut self) -> Kind {
        self.first.pop().unwrap_or_else(|| self.kinds[self.rng.below(self.kinds.len() as u64) as usize])
    }

    pub(crate) fn all_seen(&self) -> bool {
        self.first.is_empty()
    }
}
