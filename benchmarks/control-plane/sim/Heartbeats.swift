import ServeProto

/// What a simulated node's heartbeats carry (`--heartbeats`).
enum HeartbeatMode: String, Sendable, CaseIterable {
    /// Every replica's load in every heartbeat: today's protocol.
    case full
    /// The first heartbeat on a stream lists every replica; later ones only the replicas whose
    /// load or state changed since the last one sent (a head that treats the replicas left out as
    /// unchanged).
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
    private var first = true

    init(mode: HeartbeatMode) {
        self.mode = mode
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
