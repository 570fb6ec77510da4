import Foundation
import Logging
import ServeCore
import ServeProto
import ServeProxy
import ServeWire

/// The Serve controller: holds the deployed config and every node and replica it knows of, and
/// converges actual to desired state. Its decisions are `ServeCore.Reconciler.plan`; this actor
/// only feeds it facts (registrations, heartbeats, state reports, a 1 s tick) and carries out
/// the actions it returns (commands on the nodes' control streams, routes for the ingress).
public actor Controller {
    struct NodeEntry {
        var id: String
        var address: String
        var port: Int
        var total: ResourceSet
        var gpuIDs: [String]
        var nodeType: String
        var labels: [String: String]
        var handlerNames: Set<String>
        var state: NodeState
        var outbox: Outbox?
        var connection: Int
        /// Pinged every this many ping rounds (`FailureDetector.pingEvery`: its worker's head
        /// timeout).
        var pingEvery = 1
        /// Requests running at each replica, as the node last reported (replicas queue nothing:
        /// requests past their limit wait at the router).
        var loads: [String: Int] = [:]
        /// The multiplexed models each replica holds, as the node last reported (sorted).
        var models: [String: [String]] = [:]
        /// Its proxy, as its last heartbeat described it.
        var proxy: PBProxyReport?
        /// Requests waiting at its proxy's routers, per deployment (autoscaling demand).
        var waiting: [DeploymentID: Int] = [:]
    }

    struct ReplicaEntry {
        var record: ReplicaRecord
        var grant: ResourceSet
        var gpuIDs: [String]
        var createdAt: Date
    }

    struct DeploymentRuntime {
        var config: DeploymentConfig {
            didSet { self.specVersion = self.config.specVersion }
        }
        /// `config.specVersion`, kept: it hashes the config's canonical JSON, and the controller
        /// compares it for every replica on every pass.
        private(set) var specVersion: String
        var app: String
        var target: Int
        /// Start failures in a row and the retry backoff (`ServeCore.StartBackoff`).
        var backoff = StartBackoff()
        var everRunning = false
        /// The autoscaler's view: total ongoing requests over `look_back_period_s`, and what the
        /// policy remembers between decisions.
        var metrics: MetricsWindow
        var autoscaling = AutoscalingState()
        /// The last change the autoscaler made (shown by `serve status`).
        var lastAutoscale: ServeEvent?

        /// One autoscaler tick: the router's waiting requests into the window, then the policy.
        /// Returns the target before and the decision when the target changes (already set).
        mutating func autoscale(waiting: Int, running: Int, now: Double) -> (before: Int, decision: AutoscalingDecision)? {
            guard let config = self.config.autoscaling else { return nil }
            self.metrics.record(source: "router", value: Double(waiting), at: now)
            self.metrics.expire(now: now, staleAfter: max(2 * config.metricsIntervalS, 10, 4 * Controller.heartbeatInterval))
            let panicOngoing = config.panicWindowS.flatMap {
                self.metrics.aggregate(now: now, aggregation: config.aggregationFunction, over: $0)
            }
            let decision = AutoscalingPolicy.decide(
                config: config,
                currentTarget: self.target,
                running: running,
                totalOngoing: self.metrics.aggregate(now: now, aggregation: config.aggregationFunction),
                latestOngoing: self.metrics.latest(),
                now: now,
                state: &self.autoscaling,
                panicOngoing: panicOngoing
            )
            guard decision.target != self.target else { return nil }
            let before = self.target
            self.target = decision.target
            return (before, decision)
        }

        init(config: DeploymentConfig, app: String, target: Int, metrics: MetricsWindow) {
            self.config = config
            self.specVersion = config.specVersion
            self.app = app
            self.target = target
            self.metrics = metrics
        }
    }

    let logger: Logger
    let ingress: Ingress
    var config = ServeConfig()
    var nodes: [String: NodeEntry] = [:]
    /// Requests waiting at the nodes' routers, summed over the nodes (`setWaiting`).
    var waitingAtNodes: [DeploymentID: Int] = [:]
    var replicas: [String: ReplicaEntry] = [:]
    var deployments: [DeploymentID: DeploymentRuntime] = [:]
    /// Apps removed from the config whose replicas are still stopping.
    var deletingApps: Set<String> = []
    var events: [ServeEvent] = []
    var sequence: UInt64 = 0
    var connectionCounter = 0
    /// After a head restart, no replica starts before this, so workers that come back have the
    /// replicas they kept running adopted (`registerNode`) instead of doubled (`holdStarts`).
    var holdStartsUntil: ContinuousClock.Instant?
    /// The control plane's own measurements (`/metrics`).
    nonisolated let metrics = ControlPlaneMetrics()
    /// The route tables given to the proxies (`RoutePublisher`).
    var routes: RoutePublisher
    /// Which nodes are ALIVE, DRAINING or DEAD (`ServeCore.FailureDetector`); this actor feeds
    /// it what arrives on the control streams and a timer (`checkLiveness`).
    var detector: FailureDetector
    /// What each control stream passes on of the heartbeats that change nothing (a copy each).
    nonisolated let quietHeartbeats: QuietHeartbeats
    var lastPing: Double = 0
    /// Ping rounds so far (`checkLiveness`).
    var pingRound = 0
    /// A pass is due soon (`reconcileSoon`).
    var reconcileScheduled = false
    /// How long the last pass took (`reconcileSoon` waits at least twice that).
    var lastPass: Duration = .zero
    /// When the last pass ended, and whether it left nothing for a later pass to do
    /// (`reconcileTick`).
    var lastPassEnded: ContinuousClock.Instant?
    var settled = false
    /// Routes are due soon (`publishRoutesSoon`).
    var routesScheduled = false
    /// The newest table whole, as sent to nodes that register (`wholeTableFrame`).
    var wholeTableMade: (version: TableVersion, frame: RPCFrame<PBHeadMessage>)?
    /// The dashboard's timeline (`GET /api/serve/history`), sampled by the autoscaler's tick.
    var history: DeploymentHistory

    public init(
        ingress: Ingress,
        failureDetection: FailureDetector.Configuration = FailureDetector.Configuration(),
        epoch: UInt64 = UInt64(Date().timeIntervalSince1970 * 1000),
        history: DeploymentHistory.Configuration = DeploymentHistory.Configuration(),
        logger: Logger = Logger(label: "serve.controller")
    ) {
        self.ingress = ingress
        self.routes = RoutePublisher(epoch: epoch)
        self.history = DeploymentHistory(configuration: history)
        self.detector = FailureDetector(configuration: failureDetection)
        self.quietHeartbeats = QuietHeartbeats(heartbeatTimeout: failureDetection.heartbeatTimeout)
        self.logger = logger
    }

    // MARK: reconcile

    /// One pass: plan, act, publish routes.
    public func reconcile() async {
        let started = ContinuousClock.now
        defer {
            let ended = ContinuousClock.now
            self.lastPassEnded = ended
            self.lastPass = ended - started
        }
        let views = self.nodeViews()
        let targets = self.deployments.map { id, runtime in
            DeploymentTarget(
                id: id,
                replicas: runtime.target,
                specVersion: runtime.specVersion,
                demand: runtime.config.resourceDemand,
                strategy: runtime.config.placementStrategy,
                maxReplicasPerNode: runtime.config.maxReplicasPerNode
            )
        }
        let records = self.replicas.values.map(\.record)
        let actions = Reconciler.plan(targets: targets, replicas: records, nodes: views) { id in
            "\(id.name)#\(String(UInt32.random(in: 0...0xFFFF_FFFF), radix: 16).suffix(6))"
        }
        if let until = self.holdStartsUntil, until <= .now { self.holdStartsUntil = nil }
        let holding = self.holdStartsUntil != nil
        var stops: [(String?, PBStopReplica)] = []
        let now = Self.seconds(.now)
        for action in actions {
            if holding && !action.isStop { continue }
            switch action {
            case .start(let replicaID, let deployment, let nodeID):
                guard let runtime = self.deployments[deployment], runtime.backoff.mayStart(now: now) else { continue }
                self.start(replicaID, deployment, runtime, on: nodeID)
            case .place(let replicaID, let nodeID):
                guard var entry = self.replicas[replicaID], let runtime = self.deployments[entry.record.deployment],
                    runtime.backoff.mayStart(now: now)
                else { continue }
                guard self.move(&entry.record, to: .starting) else { continue }
                entry.record.nodeID = nodeID
                entry.record.message = ""
                entry.gpuIDs = self.assignGPUs(entry.grant[ResourceSet.gpu], on: nodeID, replicaID: replicaID)
                self.replicas[replicaID] = entry
                self.sendStart(entry, runtime)
            case .pend(let replicaID, let deployment, let reason):
                guard let runtime = self.deployments[deployment] else { continue }
                if var entry = self.replicas[replicaID] {
                    entry.record.message = reason
                    self.replicas[replicaID] = entry
                } else {
                    self.replicas[replicaID] = ReplicaEntry(
                        record: ReplicaRecord(id: replicaID, deployment: deployment, nodeID: nil, state: .pending, specVersion: runtime.specVersion, message: reason),
                        grant: runtime.config.resourceDemand,
                        gpuIDs: [],
                        createdAt: Date()
                    )
                }
            case .stop(let replicaID):
                stops += self.stop(replicaID, reason: "scaled down or replaced").map { [$0] } ?? []
            }
        }
        if !self.deletingApps.isEmpty {
            let appsWithReplicas = Set(self.replicas.values.map(\.record.deployment.app))
            self.deletingApps = self.deletingApps.filter { appsWithReplicas.contains($0) }
        }
        // Nothing planned, nothing held back, nothing between states: only a change (a report,
        // a config, a node, the autoscaler, each of which asks for its own pass) can give the
        // next pass anything to do.
        self.settled = actions.isEmpty && !holding && self.deletingApps.isEmpty
            && self.replicas.values.allSatisfy { $0.record.state == .running }
        self.publishRoutes()
        // After the tables that leave them out: the proxy on a stopping replica's own node has
        // stopped routing to it before the replica stops taking requests (on its one control
        // stream, in order). Other nodes' proxies that still send one are refused and retry.
        for (nodeID, stop) in stops { self.send(to: nodeID, .stopReplica(stop)) }
    }

    /// Every node's view for the reconciler, from one pass over the replicas (a pass per node
    /// would make each reconcile nodes × replicas).
    func nodeViews() -> [NodeView] {
        let byNode = self.replicasByNode()
        return self.nodes.values.map { node in
            let hosted = byNode[node.id] ?? []
            let used = hosted.reduce(ResourceSet()) { $0.adding($1.grant) }
            return NodeView(
                id: node.id,
                state: node.state,
                total: node.total,
                available: node.total.subtracting(used),
                replicaCount: hosted.count,
                gpus: node.gpuIDs.isEmpty ? nil : self.gpuAllocator(for: node.id, hosted: hosted)
            )
        }
    }

    /// The node's GPU grants, device by device, rebuilt from the replicas placed there.
    func gpuAllocator(for nodeID: String, hosted: [ReplicaEntry]? = nil) -> GPUAllocator {
        var allocator = GPUAllocator(gpuIDs: self.nodes[nodeID]?.gpuIDs ?? [])
        let hosted = hosted ?? self.replicas.values.filter { $0.record.nodeID == nodeID }
        for entry in hosted where !entry.gpuIDs.isEmpty {
            allocator.restore(replicaID: entry.record.id, gpuIDs: entry.gpuIDs, amount: entry.grant[ResourceSet.gpu])
        }
        return allocator
    }

    /// The replicas of each deployment, in one pass. Everything that runs per event (a state
    /// report, a heartbeat's consequences, the 100 ms autoscaler, a status call) groups once
    /// rather than scanning every replica per deployment: with 2,000 applications that scan was
    /// 4 million steps per replica report, and the heartbeats queued behind it long enough for
    /// the head's own node to be declared DEAD.
    func replicasByDeployment() -> [DeploymentID: [ReplicaEntry]] {
        var result: [DeploymentID: [ReplicaEntry]] = [:]
        for entry in self.replicas.values { result[entry.record.deployment, default: []].append(entry) }
        return result
    }

    /// The replicas on each node, in one pass.
    func replicasByNode() -> [String: [ReplicaEntry]] {
        var result: [String: [ReplicaEntry]] = [:]
        for entry in self.replicas.values {
            if let nodeID = entry.record.nodeID { result[nodeID, default: []].append(entry) }
        }
        return result
    }

    func start(_ replicaID: String, _ deployment: DeploymentID, _ runtime: DeploymentRuntime, on nodeID: String) {
        let entry = ReplicaEntry(
            record: ReplicaRecord(id: replicaID, deployment: deployment, nodeID: nodeID, state: .starting, specVersion: runtime.specVersion, message: ""),
            grant: runtime.config.resourceDemand,
            gpuIDs: self.assignGPUs(runtime.config.resourceDemand[ResourceSet.gpu], on: nodeID, replicaID: replicaID),
            createdAt: Date()
        )
        self.replicas[replicaID] = entry
        self.sendStart(entry, runtime)
    }

    /// GPU ids for a grant (`ServeCore.GPUAllocator`: fractions fill one GPU before the next).
    func assignGPUs(_ amount: ResourceQuantity, on nodeID: String, replicaID: String) -> [String] {
        guard amount > .zero else { return [] }
        var allocator = self.gpuAllocator(for: nodeID)
        return allocator.allocate(replicaID: replicaID, amount: amount) ?? []
    }

    func sendStart(_ entry: ReplicaEntry, _ runtime: DeploymentRuntime) {
        let config = runtime.config
        var start = PBStartReplica()
        start.replicaID = entry.record.id
        start.appName = entry.record.deployment.app
        start.deploymentName = entry.record.deployment.name
        var spec = PBReplicaSpec()
        if let handler = config.handler {
            spec.handlerName = handler
        } else if let command = config.command {
            spec.command = PBProcessCommand.with { $0.argv = command }
        }
        if let userConfig = config.userConfig { spec.userConfigJson = Data(userConfig.jsonString().utf8) }
        spec.env = config.actorOptions.runtimeEnv.envVars
        spec.env["OMP_NUM_THREADS"] = config.ompNumThreads
        spec.workingDir = config.actorOptions.runtimeEnv.workingDir ?? ""
        spec.maxOngoingRequests = UInt32(config.maxOngoingRequests)
        spec.maxQueuedRequests = Int32(config.maxQueuedRequests)
        spec.gracefulShutdownTimeoutMs = UInt32(config.gracefulShutdownTimeoutS * 1000)
        spec.healthCheckPeriodMs = UInt32(config.healthCheckPeriodS * 1000)
        spec.healthCheckTimeoutMs = UInt32(config.healthCheckTimeoutS * 1000)
        spec.healthPath = config.healthPath ?? ""
        spec.version = config.specVersion
        start.spec = spec
        start.grant = PBResourceGrant.with {
            $0.resources = PBResourceSet.with { $0.quantitiesE4 = entry.grant.quantitiesE4 }
            $0.gpuIds = entry.gpuIDs
            $0.ompNumThreads = UInt32(config.ompNumThreads) ?? 1
        }
        self.send(to: entry.record.nodeID, .startReplica(start))
    }

    /// The same message on every live node's control stream (a DEAD node has none), serialized
    /// once for all of them. Returns the message's size in bytes (0 when it could not be made).
    @discardableResult
    func sendToLiveNodes(_ kind: PBHeadMessage.OneOf_Kind, where included: (NodeEntry) -> Bool = { _ in true }) -> Int {
        guard let frame = self.frame(kind) else { return 0 }
        for (id, node) in self.nodes where node.state != .dead && included(node) {
            self.send(frame, to: id)
        }
        return frame.count
    }

    /// Marks the replica STOPPING; returns the stop command for its node (nil: nothing runs).
    func stop(_ replicaID: String, reason: String) -> (String?, PBStopReplica)? {
        guard var entry = self.replicas[replicaID] else { return nil }
        guard entry.record.state != .stopping else { return nil }
        if entry.record.state == .pending || entry.record.nodeID == nil {
            self.forget(replicaID)
            return nil
        }
        guard self.move(&entry.record, to: .stopping) else { return nil }
        self.replicas[replicaID] = entry
        let timeout = self.deployments[entry.record.deployment]?.config.gracefulShutdownTimeoutS ?? 20
        return (entry.record.nodeID, PBStopReplica.with {
            $0.replicaID = replicaID
            $0.gracefulTimeoutMs = UInt32(timeout * 1000)
            $0.reason = reason
        })
    }

    /// Commands waiting to be written to one node's control stream, at most.
    static let outboxLimit = 10_000

    /// A node's control stream, as the controller writes to it: messages already framed, so
    /// that one sent to every node is serialized once.
    typealias Outbox = AsyncStream<RPCFrame<PBHeadMessage>>.Continuation

    func send(to nodeID: String?, _ kind: PBHeadMessage.OneOf_Kind) {
        guard let nodeID, self.nodes[nodeID]?.outbox != nil, let frame = self.frame(kind) else { return }
        self.send(frame, to: nodeID)
    }

    /// The next message on the control streams, numbered and framed.
    func frame(_ kind: PBHeadMessage.OneOf_Kind) -> RPCFrame<PBHeadMessage>? {
        self.sequence += 1
        var message = PBHeadMessage()
        message.sequence = self.sequence
        message.kind = kind
        do {
            return try RPCFrame(message)
        } catch {
            self.logger.error("could not serialize a message for the nodes", metadata: ["error": "\(error)"])
            return nil
        }
    }

    func send(_ frame: RPCFrame<PBHeadMessage>, to nodeID: String) {
        guard let outbox = self.nodes[nodeID]?.outbox else { return }
        if case .dropped = outbox.yield(frame) {
            // The node has not read its last `outboxLimit` commands: its stream ends (it is
            // declared DEAD as any node whose stream closes) and it registers again.
            self.logger.error("a node's control stream is not draining; dropping it", metadata: ["serve.node": "\(nodeID)"])
            outbox.finish()
            self.nodes[nodeID]?.outbox = nil
        }
    }

    /// How long a state report waits for others before the pass it calls for
    /// (`reconcileSoon`).
    static let reportCoalescing: Duration = .milliseconds(20)

    /// State reports come in bursts: a deploy of 2,000 applications has every replica report
    /// STARTING and then RUNNING. A whole pass (plan, routes for every application) per report
    /// made the burst quadratic, and kept this actor from the heartbeats and pings queued behind
    /// it long enough for the head's own node to be declared DEAD. One pass follows the burst
    /// instead, `reportCoalescing` after the first report of it, or twice as long as the last
    /// pass took if that is longer: in a large cluster (10,000 replicas starting, each reporting
    /// twice) passes then take at most a third of the actor's time, and every route table
    /// carries more of the burst.
    func reconcileSoon() {
        guard !self.reconcileScheduled else { return }
        self.reconcileScheduled = true
        let delay = max(Self.reportCoalescing, self.lastPass * 2)
        Task {
            try? await Task.sleep(for: delay)
            await self.scheduledReconcile()
        }
    }

    /// The head's 1 s tick: a pass, which retries PENDING replicas whose backoff is over and
    /// rolls updates forward. When the last pass left the cluster settled, the tick passes
    /// only every `settledTick`: a pass plans every replica and builds every route, and at
    /// 10,000 replicas doing that every second for nothing was the largest part of the head's
    /// work at rest.
    public func reconcileTick() async {
        if self.settled, let ended = self.lastPassEnded, ContinuousClock.now - ended < Self.settledTick { return }
        await self.reconcile()
    }

    /// How often the tick passes in a settled cluster (a net under any change that failed to
    /// ask for its pass).
    static let settledTick: Duration = .seconds(10)

    func scheduledReconcile() async {
        self.reconcileScheduled = false
        await self.reconcile()
    }

    /// Drops a replica from the books: its entry, its autoscaling samples, and what its node
    /// reported of it.
    func forget(_ replicaID: String) {
        guard let entry = self.replicas.removeValue(forKey: replicaID) else { return }
        self.deployments[entry.record.deployment]?.metrics.remove(source: replicaID)
        guard let nodeID = entry.record.nodeID else { return }
        self.nodes[nodeID]?.loads[replicaID] = nil
        self.nodes[nodeID]?.models[replicaID] = nil
    }

    /// Moves a record along the replica lifecycle; a move it does not allow is a bug in the
    /// controller (the plan asked for it), logged, and not made.
    func move(_ record: inout ReplicaRecord, to next: ReplicaState) -> Bool {
        let from = record.state
        guard record.move(to: next) else {
            self.logger.error(
                "a replica state change that its lifecycle does not allow (a bug); ignored",
                metadata: ["serve.replica": "\(record.id)", "from": "\(from)", "to": "\(next)"])
            return false
        }
        return true
    }

    /// Per deployment, how many of its replicas run its current spec in one of `states` (one
    /// pass over the replicas, whatever their number).
    func currentSpecCount(in states: Set<ReplicaState>) -> [DeploymentID: Int] {
        var counts: [DeploymentID: Int] = [:]
        for entry in self.replicas.values
        where states.contains(entry.record.state) && entry.record.specVersion == self.deployments[entry.record.deployment]?.specVersion {
            counts[entry.record.deployment, default: 0] += 1
        }
        return counts
    }
}


extension ReconcileAction {
    var isStop: Bool {
        if case .stop = self { true } else { false }
    }
}
