//! Alert names and a mixer for the benches that send Alertmanager webhooks (ingest,
//! soak): the alert names kube-prometheus and node-exporter rules fire most.

/// 20 alert names of kube-prometheus' and node-exporter's rules.
pub const ALERT_NAMES: [&str; 20] = [
    "KubePodCrashLooping",
    "KubePodNotReady",
    "KubeContainerWaiting",
    "KubeDeploymentReplicasMismatch",
    "KubeStatefulSetReplicasMismatch",
    "KubeHpaMaxedOut",
    "KubeJobFailed",
    "KubeMemoryOvercommit",
    "KubeCPUOvercommit",
    "KubePersistentVolumeFillingUp",
    "CPUThrottlingHigh",
    "ContainerOOMKilled",
    "HighMemoryUsage",
    "HighErrorRate",
    "HighLatencyP99",
    "TargetDown",
    "NodeFilesystemSpaceFillingUp",
    "NodeNetworkReceiveErrs",
    "EtcdHighCommitDurations",
    "CertificateExpiringSoon",
];

/// A bijective 64-bit mixer (SplitMix64's finaliser): distinct inputs, distinct outputs.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
