import Foundation
import Logging
import ServeCore
import ServeProto
import ServeProxy
import ServeWire

/// The controller's nodes: registrations (replicas adopted or stopped), heartbeats, state
/// reports, and the failure detector's verdicts.
extension Controller {
    // MARK: nodes

    /// A worker registered on its control stream. Returns the answer and the connection number
    /// that later calls from the same stream carry (a newer stream for the same node wins).
    func registerNode(_ register: PBRegisterNode, outbox: Outbox) async -> (PBRegisterAnswer, Int) {
        let total = ResourceSet(quantitiesE4: register.totalResources.quantitiesE4)
        if let problem = Self.registrationProblem(register, total: total) {
            // Refused before anything changes: a node already known under this id keeps its stream.
            return (PBRegisterAnswer.with {
                $0.accepted = false
                $0.refusalReason = problem
            }, 0)
        }
        let connection = self.admit(register, total: total, outbox: outbox)
        self.adoptOrStop(register.runningReplicas, on: register.nodeID, total: total)
        self.keepAdoptedReplicas()
        // Its proxy serves from the whole current table at once (sent after the answer, before
        // any change a later pass publishes: each change is from the table before it).
        if let whole = self.wholeTableFrame() { self.send(whole, to: register.nodeID) }
        // A pass soon, for the burst: a hundred nodes coming back at once are one pass, not a
        // hundred (each plans every replica).
        self.reconcileSoon()
        return (PBRegisterAnswer.with {
            $0.accepted = true
            $0.nodeID = register.nodeID
            $0.heartbeatIntervalMs = UInt32(Self.heartbeatInterval * 1000)
            $0.protocolVersion = 1
        }, connection)
    }

    /// Why a registration cannot be taken (nil: it can).
    static func registrationProblem(_ register: PBRegisterNode, total: ResourceSet) -> String? {
        total.reportProblem.map { "its resources cannot be taken: \($0)" }
            ?? ((1...65535).contains(register.port) ? nil : "its data-plane port \(register.port) is not a TCP port")
    }

    /// Makes the node ALIVE on this new stream (an older stream of the same node is ended) and
    /// returns the stream's connection number.
    func admit(_ register: PBRegisterNode, total: ResourceSet, outbox: Outbox) -> Int {
        self.connectionCounter += 1
        let connection = self.connectionCounter
        let id = register.nodeID
        let rejoin = self.nodes[id] != nil
        self.nodes[id]?.outbox?.finish()
        self.setWaiting([:], of: id)
        self.nodes[id] = NodeEntry(
            id: id,
            address: register.address,
            port: Int(register.port),
            total: total,
            gpuIDs: register.gpuIds,
            nodeType: register.nodeType,
            labels: register.labels,
            handlerNames: Set(register.handlerNames),
            state: .alive,
            outbox: outbox,
            connection: connection,
            pingEvery: FailureDetector.pingEvery(headTimeout: Double(register.headTimeoutMs) / 1000, round: Self.heartbeatInterval)
        )
        self.detector.registered(id, connection: connection, now: Self.seconds(.now))
        self.record(.node, nil, before: 0, after: 1, reason: "\(rejoin ? "node rejoined" : "node joined"): \(id) at \(register.address):\(register.port) with \(total)")
        return connection
    }

    /// Replicas the worker still runs: adopted, or stopped where the config no longer wants
    /// them (`ServeCore.ReplicaAdoption`: a node that was declared DEAD had its replicas
    /// replaced, so the healed node's copies are stopped rather than served twice). The
    /// worker's word is checked: a grant that does not fit what the node offers is stopped,
    /// never summed blindly. While holding after a head restart, an autoscaled deployment
    /// may keep up to its max_replicas of what its workers still run (`keepAdoptedReplicas`).
    func adoptOrStop(_ running: [PBRunningReplica], on id: String, total: ResourceSet) {
        var used = self.replicas.values.filter { $0.record.nodeID == id }.reduce(ResourceSet()) { $0.adding($1.grant) }
        // Live replicas of each deployment's current spec, counted once (not once per reported
        // replica: a node rejoining with thousands of them would hold this actor for seconds).
        var liveCurrentByDeployment = self.currentSpecCount(in: [.starting, .running])
        for running in running {
            let deployment = DeploymentID(app: running.appName, name: running.deploymentName)
            let runtime = self.deployments[deployment]
            let liveCurrent = liveCurrentByDeployment[deployment] ?? 0
            let known = self.replicas[running.replicaID] != nil
            let grant = ResourceSet(quantitiesE4: running.grant.resources.quantitiesE4)
            let fits = known || (grant.reportProblem == nil && grant.fits(in: total.subtracting(used)))
            let target = self.holdStartsUntil != nil
                ? max(runtime?.target ?? 0, runtime?.config.autoscaling?.maxReplicas ?? 0) : runtime?.target ?? 0
            let decision = fits
                ? ReplicaAdoption.decide(
                    deployed: runtime != nil,
                    currentSpec: runtime?.specVersion == running.specVersion,
                    running: running.state == .running,
                    known: known,
                    liveCurrent: liveCurrent,
                    target: target
                )
                : .stop(reason: "its resources do not fit what the node offers")
            switch decision {
            case .adopt:
                guard !known else { continue }
                self.replicas[running.replicaID] = ReplicaEntry(
                    record: ReplicaRecord(id: running.replicaID, deployment: deployment, nodeID: id, state: .running, specVersion: running.specVersion, message: ""),
                    grant: grant,
                    gpuIDs: running.grant.gpuIds,
                    createdAt: Date()
                )
                used = used.adding(grant)
                if running.specVersion == runtime?.specVersion {
                    liveCurrentByDeployment[deployment, default: 0] += 1
                }
                self.record(.replica, deployment, before: liveCurrent, after: liveCurrent + 1, reason: "adopted replica \(running.replicaID) from node \(id)")
            case .stop(let reason):
                self.record(.replica, deployment, before: liveCurrent, after: liveCurrent, reason: "stopping replica \(running.replicaID) on node \(id): \(reason)")
                self.send(to: id, .stopReplica(PBStopReplica.with {
                    $0.replicaID = running.replicaID
                    $0.gracefulTimeoutMs = UInt32((runtime?.config.gracefulShutdownTimeoutS ?? 20) * 1000)
                    $0.reason = reason
                }))
            }
        }
    }

    /// The node's control stream ended: the node is DEAD (`FailureDetector.streamEnded`).
    func nodeDisconnected(_ id: String, connection: Int) {
        self.apply(self.detector.streamEnded(id, connection: connection, now: Self.seconds(.now)))
    }

    /// The failure detector's timer: declares DEAD the nodes silent past the heartbeat
    /// timeout, and pings the live ones (a round every heartbeat interval, each node every
    /// `pingEvery` rounds, spread over them) so that a worker can tell a silent head from a
    /// quiet one. Returns the seconds until it should run again: the next
    /// ping or the earliest deadline (which only moves later until then: hearing from a node
    /// extends its deadline, and a node that registers gets the latest one).
    @discardableResult
    public func checkLiveness(now instant: ContinuousClock.Instant = .now) -> Double {
        let now = Self.seconds(instant)
        if now - self.lastPing >= Self.heartbeatInterval {
            self.lastPing = now
            self.pingRound += 1
            let round = self.pingRound
            let ping = PBPing.with { $0.sentAtUnixMs = Int64(Date().timeIntervalSince1970 * 1000) }
            self.sendToLiveNodes(.ping(ping)) { ($0.connection + round) % $0.pingEvery == 0 }
        }
        self.apply(self.detector.tick(now: now))
        let nextPing = self.lastPing + Self.heartbeatInterval
        return min(nextPing, self.detector.nextDeadline ?? nextPing) - now
    }

    /// Carries out the failure detector's directives.
    func apply(_ directives: [FailureDetector.Directive]) {
        guard !directives.isEmpty else { return }
        for directive in directives {
            switch directive {
            case .declareDead(let id, let reason):
                guard var node = self.nodes[id] else { continue }
                let drained = node.state == .draining
                node.state = .dead
                // Ends the node's control stream (ClusterService), so a worker cut off by a
                // partition must register again, and is reconciled then, when the link heals.
                node.outbox?.finish()
                node.outbox = nil
                self.setWaiting([:], of: id)
                node.loads = [:]
                node.models = [:]
                node.waiting = [:]
                node.proxy = nil
                self.nodes[id] = node
                let lost = self.replicas.values.filter { $0.record.nodeID == id }
                for entry in lost { self.forget(entry.record.id) }
                if drained && lost.isEmpty {
                    self.record(.node, nil, before: 1, after: 0, reason: "node \(id) left after draining (\(reason))")
                } else {
                    self.record(.node, nil, before: 1, after: 0, reason: "node \(id) is DEAD: \(reason); \(lost.count) replica(s) lost, replacing them")
                }
                // Requests in flight there are answered now (502 with this reason), not when
                // the TCP connection finally gives up.
                self.ingress.nodeFailed(host: node.address, port: node.port, reason: "node \(id) is DEAD: \(reason)")
            case .markDraining(let id):
                guard self.nodes[id]?.state == .alive else { continue }
                self.nodes[id]?.state = .draining
                let count = self.replicas.values.filter { $0.record.nodeID == id }.count
                self.record(
                    .node, nil, before: 1, after: 1,
                    reason: count == 0 ? "node \(id) is DRAINING: it hosts no replica" : "node \(id) is DRAINING: moving its \(count) replica(s) to other nodes")
            }
        }
        // The replacements in a pass soon: a hundred nodes lost at once (a rack, a partition)
        // are one pass, not a hundred one after the other while the heartbeats queue.
        self.reconcileSoon()
    }

    /// How often workers report (seconds): often enough for the autoscaler's windows whatever
    /// `metrics_interval_s` a deployment asks for (the guide's default is 10 s; reporting more
    /// often only makes scaling react sooner).
    static let heartbeatInterval = 0.5

    /// A node's heartbeat: the replicas whose load or models changed since its last one (all of
    /// them in the first on a stream), its proxy when that changed, and the requests waiting at
    /// its routers. The work is what changed on the node, whatever the cluster's size: at rest,
    /// next to nothing.
    func heartbeat(_ heartbeat: PBHeartbeat, from id: String, connection: Int) {
        let now = Self.seconds(.now)
        let directives = self.detector.heard(
            from: id, connection: connection, draining: heartbeat.health.status == .draining, now: now)
        // The node's entry is changed where it lies (at 1,000 nodes this runs 2,000 times a
        // second: no copy of it, one lookup).
        guard let index = self.nodes.index(forKey: id), self.nodes.values[index].connection == connection,
            self.nodes.values[index].state != .dead
        else { return }
        var modelsChanged = false
        for load in heartbeat.replicas {
            // A replica the head does not know (stopped, forgotten) is not put in the books.
            guard let deployment = self.replicas[load.replicaID]?.record.deployment else { continue }
            // A sample for the autoscaler's window, held until the next change: the node sends
            // only what changed, and the head forgets a replica's samples with it (`forget`).
            self.deployments[deployment]?.metrics.record(source: load.replicaID, value: Double(load.runningRequests), at: now, held: true)
            self.nodes.values[index].loads[load.replicaID] = Int(load.runningRequests)
            let models = load.modelIds.sorted()
            if (self.nodes.values[index].models[load.replicaID] ?? []) != models {
                self.nodes.values[index].models[load.replicaID] = models.isEmpty ? nil : models
                modelsChanged = true
            }
        }
        if heartbeat.hasProxy { self.nodes.values[index].proxy = heartbeat.proxy }
        var waiting: [DeploymentID: Int] = [:]
        for demand in heartbeat.waiting where demand.waiting > 0 {
            waiting[DeploymentID(app: demand.app, name: demand.deployment), default: 0] += Int(min(demand.waiting, 1_000_000))
        }
        self.setWaiting(waiting, of: id)
        // Routers learn which replica holds which model now, not at the next pass (a replica
        // reports a change at once: DESIGN.md asks for routes within 0.5 s of it).
        if modelsChanged { self.publishRoutesSoon() }
        self.apply(directives)
    }

    /// Any other message on a node's control stream (an ack) shows it is alive.
    func heard(from id: String, connection: Int) {
        self.apply(self.detector.heard(from: id, connection: connection, now: Self.seconds(.now)))
    }

    func replicaReport(_ report: PBReplicaStateReport, from nodeID: String, connection: Int) {
        self.apply(self.detector.heard(from: nodeID, connection: connection, now: Self.seconds(.now)))
        // Only the replica's own node speaks for it, and only on its current stream.
        guard var entry = self.replicas[report.replicaID], entry.record.nodeID == nodeID,
            self.detector.isCurrent(nodeID, connection: connection)
        else { return }
        let id = entry.record.deployment
        switch report.state {
        case .running:
            // A late or repeated report (RUNNING again, or after a stop) changes nothing.
            guard entry.record.move(to: .running) else { return }
            entry.record.message = ""
            self.replicas[report.replicaID] = entry
            if var runtime = self.deployments[id] {
                runtime.backoff.reset()
                runtime.everRunning = true
                self.deployments[id] = runtime
            }
        case .failed:
            self.forget(report.replicaID)
            if entry.record.state == .stopping {
                // Failed while being stopped: it was on its way out anyway.
            } else if entry.record.state == .running {
                // It served, then crashed or failed its health checks: replace it at once
                // (Ray replaces an unhealthy replica without backoff).
                self.record(.replica, id, before: 1, after: 0, reason: "replica \(report.replicaID) died, replacing it: \(report.message)")
            } else {
                self.deployments[id]?.backoff.startFailed(report.message, now: Self.seconds(.now))
                self.record(.replica, id, before: 1, after: 0, reason: "replica \(report.replicaID) failed: \(report.message)")
            }
        case .stopped:
            self.forget(report.replicaID)
        case .stopping, .starting, .pending, .unspecified, .UNRECOGNIZED:
            return
        }
        self.reconcileSoon()
    }

    /// Handler names that some live worker can run (custom workers add their own).
    public func knownHandlerNames() -> Set<String> {
        self.nodes.values.filter { $0.state == .alive }.reduce(into: Set<String>()) { $0.formUnion($1.handlerNames) }
    }

    /// Node ids and states (for tests and the CLI).
    public var nodeStates: [String: NodeState] { self.nodes.mapValues(\.state) }

    /// The data-plane address of the live node that runs replica `id` (nil: no such replica, or
    /// its node is gone).
    func dataPlaneAddress(ofReplica id: String) -> (host: String, port: Int)? {
        guard let nodeID = self.replicas[id]?.record.nodeID, let node = self.nodes[nodeID], node.state != .dead else { return nil }
        return (node.address, node.port)
    }
}
