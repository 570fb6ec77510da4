import ServeProto

/// What a simulated node's heartbeats carry (`--heartbeats`).
enum HeartbeatMode: String, Sendable, CaseIterable {
    /// Every replica's load and the proxy's report in every heartbeat (the protocol before
    /// heartbeats carried changes).
    case full
    /// As a worker sends them: the first heartbeat on a stream lists every replica and the
    /// proxy; later ones only the replicas whose load or state changed since the last one sent,
    /// and the proxy when its report changed (the head treats what is left out as unchanged).
    case changes
}

/// One replica's part of a heartbeat.
struct ReplicaLoadSample: Sendable, Hashable {
    var replicaID: String
    var running: UInt32
    var state: PBReplicaState
}

/// Decides which replicas one control stream's next heartbeat lists. A value, fed the node's
/// replicas at each heartbeat; a new one per stream (its first heartbeat is always whole).
struct HeartbeatTracker: Sendable {
    let mode: HeartbeatMode
    /// What the last heartbeat told the head, replica by replica (`changes` only).
    private var told: [String: ReplicaLoadSample] = [:]
    private var toldProxy: PBProxyReport?
    private var first = true

    init(mode: HeartbeatMode) {
        self.mode = mode
    }

    /// The proxy's report, if the next heartbeat carries it (call before `select`).
    mutating func proxy(_ report: PBProxyReport) -> PBProxyReport? {
        guard self.mode == .changes else { return report }
        guard self.first || report != self.toldProxy else { return nil }
        self.toldProxy = report
        return report
    }

    mutating func select(_ samples: [ReplicaLoadSample]) -> [ReplicaLoadSample] {
        defer { self.first = false }
        switch self.mode {
        case .full:
            return samples
        case .changes:
            let changed = self.first ? samples : samples.filter { self.told[$0.replicaID] != $0 }
            self.told = Dictionary(samples.map { ($0.replicaID, $0) }, uniquingKeysWith: { a, _ in a })
            return changed
        }
    }
}
