import ServeCore

/// What the node autoscaler needs from the Serve controller: the nodes with what they host, the
/// PENDING replicas' demands, a drain before a termination, and its events in the same log as
/// the controller's (`GET /api/serve/events`).
extension Controller {
    /// The nodes (DEAD ones included, so the planner sees a node leave) and one demand per
    /// PENDING replica.
    func nodeDemandSnapshot() -> (nodes: [ObservedNode], demands: [ResourceDemand]) {
        var groupsByNode: [String: [String: Int]] = [:]
        for entry in self.replicas.values {
            guard let nodeID = entry.record.nodeID else { continue }
            groupsByNode[nodeID, default: [:]]["\(entry.record.deployment)", default: 0] += 1
        }
        let nodes = self.nodeViews().sorted { $0.id < $1.id }.map { view in
            ObservedNode(view: view, nodeType: self.nodes[view.id]?.nodeType ?? "", replicasByGroup: groupsByNode[view.id] ?? [:])
        }
        let demands = self.replicas.values.filter { $0.record.state == .pending }.sorted { $0.record.id < $1.record.id }.map { entry in
            ResourceDemand(
                resources: entry.grant,
                group: "\(entry.record.deployment)",
                maxPerNode: self.deployments[entry.record.deployment]?.config.maxReplicasPerNode
            )
        }
        return (nodes, demands)
    }

    enum DrainOutcome: Sendable, Equatable {
        /// DRAINING now (or never joined, or already gone): safe to terminate.
        case drained
        /// A replica was placed on it since the planner saw it idle: keep it.
        case hostsReplicas
    }

    /// Marks a node that hosts nothing DRAINING, so that nothing is placed on it while the
    /// provider terminates it. The check and the mark happen in one actor turn: no replica can
    /// land in between.
    func drainForTermination(_ nodeID: String) -> DrainOutcome {
        guard let node = self.nodes[nodeID], node.state != .dead else { return .drained }
        if self.replicas.values.contains(where: { $0.record.nodeID == nodeID }) { return .hostsReplicas }
        // The failure detector owns node states: the drain goes through it, as a worker's own does.
        self.apply(self.detector.drain(nodeID))
        return .drained
    }

    func recordNodeAutoscaling(before: Int, after: Int, reason: String) {
        self.record(.nodeAutoscale, nil, before: before, after: after, reason: reason)
    }
}
