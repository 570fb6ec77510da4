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
        var outbox: AsyncStream<PBHeadMessage>.Continuation?
        var connection: Int
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

        init(config: DeploymentConfig, app: String, target: Int, metrics: MetricsWindow) {
            self.config = config
            self.specVersion = config.specVersion
            self.app = app
            self.target = target
            self.metrics = metrics
        }
    }

    private let logger: Logger
    private let ingress: Ingress
    private(set) var config = ServeConfig()
    var nodes: [String: NodeEntry] = [:]
    var replicas: [String: ReplicaEntry] = [:]
    var deployments: [DeploymentID: DeploymentRuntime] = [:]
    /// Apps removed from the config whose replicas are still stopping.
    private var deletingApps: Set<String> = []
    private var events: [ServeEvent] = []
    private var sequence: UInt64 = 0
    private var connectionCounter = 0
    private var lastRoutes: RouteTable?
    /// After a head restart, no replica starts before this, so workers that come back have the
    /// replicas they kept running adopted (`registerNode`) instead of doubled (`holdStarts`).
    private var holdStartsUntil: ContinuousClock.Instant?
    /// Numbers the route tables given to the proxies, in the order they were made.
    private var routesSequence: UInt64 = 0
    /// When this head started (Unix ms): the epoch of its route tables, so that a restarted
    /// head's tables are newer than any the proxies kept from before.
    private let epoch: UInt64
    /// The last route table, as sent to the nodes' proxies.
    private var routeUpdate: PBRouteTableUpdate?
    /// Which nodes are ALIVE, DRAINING or DEAD (`ServeCore.FailureDetector`); this actor feeds
    /// it what arrives on the control streams and a timer (`checkLiveness`).
    var detector: FailureDetector
    private var lastPing: Double = 0
    /// A pass is due soon (`reconcileSoon`).
    private var reconcileScheduled = false
    /// Routes are due soon (`publishRoutesSoon`).
    private var routesScheduled = false
    /// The dashboard's timeline (`GET /api/serve/history`), sampled by the autoscaler's tick.
    private var history: DeploymentHistory

    public init(
        ingress: Ingress,
        failureDetection: FailureDetector.Configuration = FailureDetector.Configuration(),
        epoch: UInt64 = UInt64(Date().timeIntervalSince1970 * 1000),
        history: DeploymentHistory.Configuration = DeploymentHistory.Configuration(),
        logger: Logger = Logger(label: "serve.controller")
    ) {
        self.ingress = ingress
        self.epoch = epoch
        self.history = DeploymentHistory(configuration: history)
        self.detector = FailureDetector(configuration: failureDetection)
        self.logger = logger
    }

    // MARK: config

    /// Replaces the whole config (apps left out are deleted), as Ray's PUT does. The config was
    /// validated already: nothing here can refuse it.
    public func deploy(_ config: ServeConfig) async {
        self.config = config
        var seen = Set<DeploymentID>()
        var byDeployment: [DeploymentID: [ReplicaEntry]]?
        for app in config.applications {
            self.deletingApps.remove(app.name)
            for deployment in app.deployments {
                let id = DeploymentID(app: app.name, name: deployment.name)
                seen.insert(id)
                if var runtime = self.deployments[id] {
                    let before = runtime.target
                    let oldConfig = runtime.config
                    runtime.config = deployment
                    runtime.target = self.target(for: deployment, previous: oldConfig, current: before)
                    if oldConfig.autoscaling?.lookBackPeriodS != deployment.autoscaling?.lookBackPeriodS {
                        runtime.metrics = MetricsWindow(lookBack: deployment.autoscaling?.lookBackPeriodS ?? 30)
                    }
                    if oldConfig.specVersion != deployment.specVersion {
                        runtime.backoff.reset()
                    }
                    self.deployments[id] = runtime
                    if before != runtime.target {
                        self.record(.scale, id, before: before, after: runtime.target, reason: "config changed num_replicas")
                    }
                    if oldConfig.specVersion == deployment.specVersion {
                        if byDeployment == nil { byDeployment = self.replicasByDeployment() }
                        self.reconfigureLightweight(id, from: oldConfig, to: deployment, replicas: byDeployment?[id] ?? [])
                    } else {
                        self.record(.deploy, id, before: before, after: runtime.target, reason: "code or resources changed: rolling update")
                    }
                } else {
                    let target = deployment.initialReplicaCount
                    self.deployments[id] = DeploymentRuntime(
                        config: deployment,
                        app: app.name,
                        target: target,
                        metrics: MetricsWindow(lookBack: deployment.autoscaling?.lookBackPeriodS ?? 30)
                    )
                    self.record(.deploy, id, before: 0, after: target, reason: "deployed")
                }
            }
        }
        for id in self.deployments.keys where !seen.contains(id) {
            let before = self.deployments[id]?.target ?? 0
            self.deployments[id] = nil
            self.deletingApps.insert(id.app)
            self.record(.scale, id, before: before, after: 0, reason: "deleted")
        }
        for warning in ConfigParser.warnings(for: config) {
            self.record(.warning, warning.deployment, before: 0, after: 0, reason: "config warning: \(warning)")
        }
        await self.reconcile()
    }

    /// The target for a deployment whose config changed: a new fixed count applies at once; an
    /// autoscaled one keeps its current size within its new bounds.
    private func target(for deployment: DeploymentConfig, previous: DeploymentConfig, current: Int) -> Int {
        if let autoscaling = deployment.autoscaling {
            if previous.autoscaling == nil { return deployment.initialReplicaCount }
            return min(max(current, autoscaling.minReplicas), autoscaling.maxReplicas)
        }
        return deployment.initialReplicaCount
    }

    /// `user_config` and `max_ongoing_requests` change in place on running replicas.
    private func reconfigureLightweight(_ id: DeploymentID, from old: DeploymentConfig, to new: DeploymentConfig, replicas: [ReplicaEntry]) {
        guard old.userConfig != new.userConfig || old.maxOngoingRequests != new.maxOngoingRequests else { return }
        var change = PBReconfigureReplica()
        if old.userConfig != new.userConfig {
            change.userConfigJson = Data((new.userConfig ?? .null).jsonString().utf8)
        }
        if old.maxOngoingRequests != new.maxOngoingRequests {
            change.maxOngoingRequests = UInt32(new.maxOngoingRequests)
        }
        for entry in replicas where entry.record.state != .stopping {
            change.replicaID = entry.record.id
            change.specVersion = entry.record.specVersion
            self.send(to: entry.record.nodeID, .reconfigureReplica(change))
        }
    }

    /// Sets a deployment's replica target (the application autoscaler's entry point).
    public func setTarget(_ id: DeploymentID, _ target: Int, reason: String) async {
        guard var runtime = self.deployments[id], runtime.target != target else { return }
        self.record(.scale, id, before: runtime.target, after: target, reason: reason)
        runtime.target = target
        self.deployments[id] = runtime
        await self.reconcile()
    }

    /// Starts no replica for `grace` (see `HeadOptions.reconnectGrace`) or until the next
    /// deploy; the 1 s reconcile tick starts what is still missing once it has passed.
    func holdStarts(for grace: Duration) {
        self.holdStartsUntil = .now + grace
    }

    /// While holding after a restart: an autoscaled deployment's target starts again at its
    /// initial count, but the replicas the workers kept running are what the autoscaler had
    /// decided. The target keeps them (within the deployment's bounds) instead of scaling them
    /// down the moment they are adopted.
    private func keepAdoptedReplicas() {
        guard self.holdStartsUntil != nil else { return }
        let runningByDeployment = self.currentSpecCount(in: [.running])
        for (id, runtime) in self.deployments {
            guard let autoscaling = runtime.config.autoscaling else { continue }
            let running = runningByDeployment[id] ?? 0
            let target = min(max(runtime.target, running), autoscaling.maxReplicas)
            guard target != runtime.target else { continue }
            self.record(.autoscale, id, before: runtime.target, after: target, reason: "kept the \(running) replicas workers still ran after a head restart")
            self.deployments[id]?.target = target
        }
    }

    /// A deploy by the user ends the hold: what it asks for starts now.
    func stopHoldingStarts() {
        self.holdStartsUntil = nil
    }

    // MARK: nodes

    /// A worker registered on its control stream. Returns the answer and the connection number
    /// that later calls from the same stream carry (a newer stream for the same node wins).
    func registerNode(_ register: PBRegisterNode, outbox: AsyncStream<PBHeadMessage>.Continuation) async -> (PBRegisterAnswer, Int) {
        let total = ResourceSet(quantitiesE4: register.totalResources.quantitiesE4)
        let problem = total.reportProblem.map { "its resources cannot be taken: \($0)" }
            ?? ((1...65535).contains(register.port) ? nil : "its data-plane port \(register.port) is not a TCP port")
        if let problem {
            // Refused before anything changes: a node already known under this id keeps its stream.
            var answer = PBRegisterAnswer()
            answer.accepted = false
            answer.refusalReason = problem
            return (answer, 0)
        }
        self.connectionCounter += 1
        let connection = self.connectionCounter
        let id = register.nodeID
        let gpuIDs = register.gpuIds
        let rejoin = self.nodes[id] != nil
        self.nodes[id]?.outbox?.finish()
        self.nodes[id] = NodeEntry(
            id: id,
            address: register.address,
            port: Int(register.port),
            total: total,
            gpuIDs: gpuIDs,
            nodeType: register.nodeType,
            labels: register.labels,
            handlerNames: Set(register.handlerNames),
            state: .alive,
            outbox: outbox,
            connection: connection
        )
        self.detector.registered(id, connection: connection, now: Self.seconds(.now))
        self.record(.node, nil, before: 0, after: 1, reason: "\(rejoin ? "node rejoined" : "node joined"): \(id) at \(register.address):\(register.port) with \(total)")
        // Replicas the worker still runs: adopted, or stopped where the config no longer wants
        // them (`ServeCore.ReplicaAdoption`: a node that was declared DEAD had its replicas
        // replaced, so the healed node's copies are stopped rather than served twice). The
        // worker's word is checked: a grant that does not fit what the node offers is stopped,
        // never summed blindly. While holding after a head restart, an autoscaled deployment
        // may keep up to its max_replicas of what its workers still run (`keepAdoptedReplicas`).
        var used = self.replicas.values.filter { $0.record.nodeID == id }.reduce(ResourceSet()) { $0.adding($1.grant) }
        // Live replicas of each deployment's current spec, counted once (not once per reported
        // replica: a node rejoining with thousands of them would hold this actor for seconds).
        var liveCurrentByDeployment = self.currentSpecCount(in: [.starting, .running])
        for running in register.runningReplicas {
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
                if !known {
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
                }
            case .stop(let reason):
                self.record(.replica, deployment, before: liveCurrent, after: liveCurrent, reason: "stopping replica \(running.replicaID) on node \(id): \(reason)")
                self.send(to: id, .stopReplica(PBStopReplica.with {
                    $0.replicaID = running.replicaID
                    $0.gracefulTimeoutMs = UInt32((runtime?.config.gracefulShutdownTimeoutS ?? 20) * 1000)
                    $0.reason = reason
                }))
            }
        }
        self.keepAdoptedReplicas()
        var answer = PBRegisterAnswer()
        answer.accepted = true
        answer.nodeID = id
        answer.heartbeatIntervalMs = UInt32(Self.heartbeatInterval * 1000)
        answer.protocolVersion = 1
        await self.reconcile()
        // Its proxy serves from the current table at once (sent after the answer).
        if let update = self.routeUpdate { self.send(to: id, .routes(update)) }
        return (answer, connection)
    }

    /// The node's control stream ended: the node is DEAD (`FailureDetector.streamEnded`).
    func nodeDisconnected(_ id: String, connection: Int) async {
        await self.apply(self.detector.streamEnded(id, connection: connection, now: Self.seconds(.now)))
    }

    /// The failure detector's timer: declares DEAD the nodes silent past the heartbeat
    /// timeout, and pings the live ones every heartbeat interval so that a worker can tell a
    /// silent head from a quiet one. Returns the seconds until it should run again: the next
    /// ping or the earliest deadline (which only moves later until then: hearing from a node
    /// extends its deadline, and a node that registers gets the latest one).
    @discardableResult
    public func checkLiveness(now instant: ContinuousClock.Instant = .now) async -> Double {
        let now = Self.seconds(instant)
        if now - self.lastPing >= Self.heartbeatInterval {
            self.lastPing = now
            let ping = PBPing.with { $0.sentAtUnixMs = Int64(Date().timeIntervalSince1970 * 1000) }
            for node in self.nodes.values where node.state != .dead {
                self.send(to: node.id, .ping(ping))
            }
        }
        await self.apply(self.detector.tick(now: now))
        let nextPing = self.lastPing + Self.heartbeatInterval
        return min(nextPing, self.detector.nextDeadline ?? nextPing) - now
    }

    /// Carries out the failure detector's directives.
    func apply(_ directives: [FailureDetector.Directive]) async {
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
                node.loads = [:]
                node.waiting = [:]
                node.proxy = nil
                self.nodes[id] = node
                let lost = self.replicas.values.filter { $0.record.nodeID == id }
                for entry in lost {
                    self.replicas[entry.record.id] = nil
                    self.deployments[entry.record.deployment]?.metrics.remove(source: entry.record.id)
                }
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
        await self.reconcile()
    }

    /// How often workers report (seconds): often enough for the autoscaler's windows whatever
    /// `metrics_interval_s` a deployment asks for (the guide's default is 10 s; reporting more
    /// often only makes scaling react sooner).
    static let heartbeatInterval = 0.5

    func heartbeat(_ heartbeat: PBHeartbeat, from id: String, connection: Int) async {
        let directives = self.detector.heard(
            from: id, connection: connection, draining: heartbeat.health.status == .draining, now: Self.seconds(.now))
        guard var node = self.nodes[id], node.connection == connection, node.state != .dead else { return }
        node.loads = Dictionary(heartbeat.replicas.map { ($0.replicaID, Int($0.runningRequests)) }, uniquingKeysWith: { a, _ in a })
        let models = Dictionary(
            heartbeat.replicas.compactMap { $0.modelIds.isEmpty ? nil : ($0.replicaID, $0.modelIds.sorted()) }, uniquingKeysWith: { a, _ in a })
        let modelsChanged = models != node.models
        node.models = models
        if heartbeat.hasProxy { node.proxy = heartbeat.proxy }
        node.waiting = [:]
        for demand in heartbeat.waiting where demand.waiting > 0 {
            node.waiting[DeploymentID(app: demand.app, name: demand.deployment), default: 0] += Int(min(demand.waiting, 1_000_000))
        }
        self.nodes[id] = node
        let now = Self.seconds(.now)
        for load in heartbeat.replicas {
            guard let deployment = self.replicas[load.replicaID]?.record.deployment else { continue }
            self.deployments[deployment]?.metrics.record(
                source: load.replicaID, value: Double(load.runningRequests), at: now)
        }
        // Routers learn which replica holds which model now, not at the next pass (a replica
        // reports a change at once: DESIGN.md asks for routes within 0.5 s of it).
        if modelsChanged { self.publishRoutesSoon() }
        await self.apply(directives)
    }

    /// Any other message on a node's control stream (a pong) shows it is alive.
    func heard(from id: String, connection: Int) async {
        await self.apply(self.detector.heard(from: id, connection: connection, now: Self.seconds(.now)))
    }

    // MARK: the application autoscaler

    /// Seconds on the process's monotonic clock (the policy's time input).
    static func seconds(_ instant: ContinuousClock.Instant) -> Double {
        MonotonicTime.seconds(instant)
    }

    /// One autoscaler pass (every 100 ms, like Ray's control loop): each autoscaled deployment's
    /// window gets the requests waiting at the router, and `AutoscalingPolicy.decide` (pure, in
    /// ServeCore) proposes a target; a change is applied and recorded as an event. Once a second
    /// it also samples every deployment for the dashboard's timeline (`DeploymentHistory`).
    public func autoscale(waitingAtRouter: [DeploymentID: Int], now instant: ContinuousClock.Instant = .now) async {
        let now = Self.seconds(instant)
        // Every proxy's waiting requests count: the head's own and each node's (its heartbeat).
        var waitingAtRouter = waitingAtRouter
        for node in self.nodes.values where node.state != .dead {
            for (id, count) in node.waiting { waitingAtRouter[id, default: 0] += count }
        }
        var changed = false
        let runningByDeployment = self.currentSpecCount(in: [.running])
        for (id, var runtime) in self.deployments {
            guard let config = runtime.config.autoscaling else { continue }
            runtime.metrics.record(source: "router", value: Double(waitingAtRouter[id] ?? 0), at: now)
            runtime.metrics.expire(now: now, staleAfter: max(2 * config.metricsIntervalS, 10, 4 * Self.heartbeatInterval))
            let running = runningByDeployment[id] ?? 0
            let panicOngoing = config.panicWindowS.flatMap {
                runtime.metrics.aggregate(now: now, aggregation: config.aggregationFunction, over: $0)
            }
            let decision = AutoscalingPolicy.decide(
                config: config,
                currentTarget: runtime.target,
                running: running,
                totalOngoing: runtime.metrics.aggregate(now: now, aggregation: config.aggregationFunction),
                latestOngoing: runtime.metrics.latest(),
                now: now,
                state: &runtime.autoscaling,
                panicOngoing: panicOngoing
            )
            if decision.target != runtime.target {
                runtime.lastAutoscale = self.record(.autoscale, id, before: runtime.target, after: decision.target, reason: decision.reason)
                runtime.target = decision.target
                changed = true
            }
            self.deployments[id] = runtime
        }
        if self.history.isDue(now: now) { self.sampleHistory(waitingAtRouter: waitingAtRouter, now: now) }
        if changed { await self.reconcile() }
    }

    func replicaReport(_ report: PBReplicaStateReport, from nodeID: String, connection: Int) async {
        await self.apply(self.detector.heard(from: nodeID, connection: connection, now: Self.seconds(.now)))
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
            self.replicas[report.replicaID] = nil
            self.deployments[id]?.metrics.remove(source: report.replicaID)
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
            self.replicas[report.replicaID] = nil
            self.deployments[id]?.metrics.remove(source: report.replicaID)
        case .stopping, .starting, .pending, .unspecified, .UNRECOGNIZED:
            return
        }
        self.reconcileSoon()
    }

    /// How long a state report waits for others before the pass it calls for
    /// (`reconcileSoon`).
    static let reportCoalescing: Duration = .milliseconds(20)

    /// State reports come in bursts: a deploy of 2,000 applications has every replica report
    /// STARTING and then RUNNING. A whole pass (plan, routes for every application) per report
    /// made the burst quadratic, and kept this actor from the heartbeats and pings queued behind
    /// it long enough for the head's own node to be declared DEAD. One pass follows the burst
    /// instead, `reportCoalescing` after the first report of it.
    private func reconcileSoon() {
        guard !self.reconcileScheduled else { return }
        self.reconcileScheduled = true
        Task {
            try? await Task.sleep(for: Self.reportCoalescing)
            await self.scheduledReconcile()
        }
    }

    private func scheduledReconcile() async {
        self.reconcileScheduled = false
        await self.reconcile()
    }

    /// Routes for a change of the models replicas hold: one table `reportCoalescing` after the
    /// first change of a burst (models thrashing on many nodes would otherwise rebuild the whole
    /// table on every heartbeat), well within the 0.5 s DESIGN.md allows.
    private func publishRoutesSoon() {
        guard !self.routesScheduled else { return }
        self.routesScheduled = true
        Task {
            try? await Task.sleep(for: Self.reportCoalescing)
            self.scheduledPublish()
        }
    }

    private func scheduledPublish() {
        self.routesScheduled = false
        self.publishRoutes()
    }

    // MARK: reconcile

    /// One pass: plan, act, publish routes.
    public func reconcile() async {
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
    private func gpuAllocator(for nodeID: String, hosted: [ReplicaEntry]? = nil) -> GPUAllocator {
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
    private func replicasByDeployment() -> [DeploymentID: [ReplicaEntry]] {
        var result: [DeploymentID: [ReplicaEntry]] = [:]
        for entry in self.replicas.values { result[entry.record.deployment, default: []].append(entry) }
        return result
    }

    /// The replicas on each node, in one pass.
    private func replicasByNode() -> [String: [ReplicaEntry]] {
        var result: [String: [ReplicaEntry]] = [:]
        for entry in self.replicas.values {
            if let nodeID = entry.record.nodeID { result[nodeID, default: []].append(entry) }
        }
        return result
    }

    private func start(_ replicaID: String, _ deployment: DeploymentID, _ runtime: DeploymentRuntime, on nodeID: String) {
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
    private func assignGPUs(_ amount: ResourceQuantity, on nodeID: String, replicaID: String) -> [String] {
        guard amount > .zero else { return [] }
        var allocator = self.gpuAllocator(for: nodeID)
        return allocator.allocate(replicaID: replicaID, amount: amount) ?? []
    }

    private func sendStart(_ entry: ReplicaEntry, _ runtime: DeploymentRuntime) {
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

    /// Marks the replica STOPPING; returns the stop command for its node (nil: nothing runs).
    private func stop(_ replicaID: String, reason: String) -> (String?, PBStopReplica)? {
        guard var entry = self.replicas[replicaID] else { return nil }
        guard entry.record.state != .stopping else { return nil }
        if entry.record.state == .pending || entry.record.nodeID == nil {
            self.replicas[replicaID] = nil
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

    private func send(to nodeID: String?, _ kind: PBHeadMessage.OneOf_Kind) {
        guard let nodeID, let outbox = self.nodes[nodeID]?.outbox else { return }
        self.sequence += 1
        var message = PBHeadMessage()
        message.sequence = self.sequence
        message.kind = kind
        if case .dropped = outbox.yield(message) {
            // The node has not read its last `outboxLimit` commands: its stream ends (it is
            // declared DEAD as any node whose stream closes) and it registers again.
            self.logger.error("a node's control stream is not draining; dropping it", metadata: ["serve.node": "\(nodeID)"])
            outbox.finish()
            self.nodes[nodeID]?.outbox = nil
        }
    }

    /// Gives every proxy the RUNNING replicas of every deployment: the ingress deployments for
    /// HTTP traffic, all of them for handles.
    private func publishRoutes() {
        let byDeployment = self.replicasByDeployment()
        func route(_ deployment: DeploymentConfig, of app: ApplicationConfig) -> DeploymentRoute {
            let id = DeploymentID(app: app.name, name: deployment.name)
            let replicas = (byDeployment[id] ?? [])
                .filter { $0.record.state == .running }
                .compactMap { entry -> ReplicaRoute? in
                    // A DRAINING node's replicas serve until they are stopped (after their
                    // replacements run); a DEAD node's are gone.
                    guard let nodeID = entry.record.nodeID, let node = self.nodes[nodeID], node.state != .dead else { return nil }
                    let load = node.loads[entry.record.id]
                    return ReplicaRoute(
                        id: entry.record.id, nodeID: nodeID, host: node.address, port: node.port, reportedQueueLength: load ?? 0,
                        models: node.models[entry.record.id] ?? [])
                }
                .sorted { $0.id < $1.id }
            // Requests wait for a replica that is coming (cold start, PENDING), not for one that
            // keeps failing to start: those are answered 503 with the reason.
            let backoff = self.deployments[id]?.backoff
            let unavailable = backoff.flatMap { $0.isUnhealthy && replicas.isEmpty ? "replicas failed to start \($0.consecutiveFailures) time(s) in a row; last: \($0.lastError)" : nil }
            return DeploymentRoute(
                id: id, maxOngoingRequests: deployment.maxOngoingRequests, maxQueuedRequests: deployment.maxQueuedRequests,
                replicas: replicas, unavailable: unavailable)
        }
        let applications = self.config.applications.map { app in
            let ingress = app.ingress
            return ApplicationRoute(
                name: app.name,
                routePrefix: app.routePrefix,
                ingress: route(ingress, of: app),
                others: app.deployments.filter { $0.name != ingress.name }.map { route($0, of: app) },
                idempotent: app.idempotent
            )
        }
        let table = RouteTable(
            applications: applications,
            requestTimeout: self.config.httpOptions.requestTimeoutS.map { .milliseconds(Int($0 * 1000)) },
            maxBodyBytes: self.config.httpOptions.maxBodyBytes,
            servesHTTP: self.config.proxyLocation != .disabled
        )
        guard table != self.lastRoutes || self.routeUpdate?.proxyLocation.location != self.config.proxyLocation else { return }
        self.lastRoutes = table
        self.routesSequence += 1
        let version = TableVersion(epoch: self.epoch, sequence: self.routesSequence)
        self.logger.debug(
            "route table published",
            metadata: ["version": "\(version)", "applications": "\(table.applications.count)", "nodes": "\(self.nodes.count)"])
        self.ingress.update(table, version: version)
        // Every node's proxy gets the same table, in the order made (one control stream each).
        let update = table.update(
            version: version,
            proxyLocation: self.config.proxyLocation,
            httpHost: self.config.httpOptions.host,
            httpPort: self.config.httpOptions.port)
        self.routeUpdate = update
        for node in self.nodes.values where node.state != .dead {
            self.send(to: node.id, .routes(update))
        }
    }

    // MARK: events and status

    @discardableResult
    func record(_ kind: ServeEvent.Kind, _ deployment: DeploymentID?, before: Int, after: Int, reason: String) -> ServeEvent {
        let event = ServeEvent(time: Date(), kind: kind, deployment: deployment, before: before, after: after, reason: reason)
        self.events.append(event)
        if self.events.count > 1000 { self.events.removeFirst(self.events.count - 1000) }
        // A change of a live deployment's target is marked on its timeline (a deploy starts the
        // timeline, a deletion ends it).
        if let deployment, kind == .autoscale || kind == .scale, before != after, self.deployments[deployment] != nil {
            self.history.decided(
                deployment,
                .init(t: Self.seconds(.now), kind: kind.rawValue, before: before, after: after, reason: reason))
        }
        self.logger.info("\(reason)", metadata: ["serve.deployment": "\(deployment.map { "\($0)" } ?? "-")", "before": "\(before)", "after": "\(after)"])
        return event
    }

    public func eventsJSON() -> JSONValue {
        .object(["events": .array(self.events.map(\.json))])
    }

    public func historyJSON(now: ContinuousClock.Instant = .now, unixNow: Date = Date()) -> JSONValue {
        self.history.json(now: Self.seconds(now), unixNow: unixNow.timeIntervalSince1970)
    }

    /// One sample of every deployment for the timeline (once per `DeploymentHistory`
    /// interval, from the autoscaler's tick).
    private func sampleHistory(waitingAtRouter: [DeploymentID: Int], now: Double) {
        let states = self.replicaStates()
        let ongoing = self.ongoingRequests()
        var readings: [DeploymentID: DeploymentHistory.Reading] = [:]
        for (id, runtime) in self.deployments {
            readings[id] = .init(
                target: runtime.target, running: states[id]?[.running] ?? 0, ongoing: ongoing[id] ?? 0,
                queued: waitingAtRouter[id] ?? 0)
        }
        self.history.sample(readings, now: now)
    }

    /// Replica counts per state and queue lengths, for metrics and the autoscaler.
    public func replicaStates() -> [DeploymentID: [ReplicaState: Int]] {
        var result: [DeploymentID: [ReplicaState: Int]] = [:]
        for entry in self.replicas.values {
            result[entry.record.deployment, default: [:]][entry.record.state, default: 0] += 1
        }
        return result
    }

    public func ongoingRequests() -> [DeploymentID: Int] {
        var result: [DeploymentID: Int] = [:]
        for entry in self.replicas.values {
            guard let nodeID = entry.record.nodeID, let load = self.nodes[nodeID]?.loads[entry.record.id] else { continue }
            result[entry.record.deployment, default: 0] += load
        }
        return result
    }

    public func statusJSON() -> JSONValue {
        var apps: [String: JSONValue] = [:]
        let byDeployment = self.replicasByDeployment()
        for app in self.config.applications {
            var deployments: [String: JSONValue] = [:]
            var statuses: [String] = []
            for deployment in app.deployments {
                let id = DeploymentID(app: app.name, name: deployment.name)
                guard let runtime = self.deployments[id] else { continue }
                let entries = (byDeployment[id] ?? []).sorted { $0.record.id < $1.record.id }
                let status = self.deploymentStatus(runtime, entries)
                statuses.append(status)
                let pendingMessage = entries.first { $0.record.state == .pending }?.record.message
                var message = pendingMessage.map { "replicas pending: \($0)" } ?? ""
                if self.holdStartsUntil != nil && entries.filter({ $0.record.state == .running }).count < runtime.target {
                    message = "the head restarted: waiting for workers to reconnect with their replicas before starting new ones"
                }
                if runtime.backoff.consecutiveFailures > 0 {
                    message = "replicas failed to start \(runtime.backoff.consecutiveFailures) time(s) in a row; last: \(runtime.backoff.lastError)"
                }
                var autoscaling: JSONValue = .null
                if let config = runtime.config.autoscaling {
                    autoscaling = .object([
                        "min_replicas": .number(Double(config.minReplicas)),
                        "max_replicas": .number(Double(config.maxReplicas)),
                        "last_decision": runtime.lastAutoscale?.json ?? .null,
                    ])
                }
                deployments[deployment.name] = .object([
                    "autoscaling": autoscaling,
                    "status": .string(status),
                    "target_replicas": .number(Double(runtime.target)),
                    "message": .string(message),
                    "replicas": .array(entries.map { entry in
                        let load = entry.record.nodeID.flatMap { self.nodes[$0]?.loads[entry.record.id] }
                        return .object([
                            "replica_id": .string(entry.record.id),
                            "node_id": entry.record.nodeID.map { .string($0) } ?? .null,
                            "state": .string(entry.record.state.rawValue),
                            "ongoing_requests": .number(Double(load ?? 0)),
                            "model_ids": .array((entry.record.nodeID.flatMap { self.nodes[$0]?.models[entry.record.id] } ?? []).map { .string($0) }),
                            "message": .string(entry.record.message),
                            "resources": .string(entry.grant.description),
                            "gpu_ids": .array(entry.gpuIDs.map { .string($0) }),
                        ])
                    }),
                ])
            }
            let appStatus: String
            if statuses.contains("UNHEALTHY") {
                appStatus = app.deployments.contains { self.deployments[DeploymentID(app: app.name, name: $0.name)]?.everRunning == true }
                    ? "UNHEALTHY" : "DEPLOY_FAILED"
            } else if statuses.allSatisfy({ $0 == "HEALTHY" }) {
                appStatus = "RUNNING"
            } else {
                appStatus = "DEPLOYING"
            }
            apps[app.name] = .object([
                "status": .string(appStatus),
                "route_prefix": .string(app.routePrefix),
                "ingress": .string(app.ingress.name),
                "deployments": .object(deployments),
            ])
        }
        // An app whose last replica has just stopped is gone, even before the next pass tidies
        // `deletingApps` (state reports ask for passes a little later: `reconcileSoon`).
        let appsWithReplicas = Set(byDeployment.keys.map(\.app))
        for app in self.deletingApps where apps[app] == nil && appsWithReplicas.contains(app) {
            apps[app] = .object(["status": "DELETING", "route_prefix": .null, "deployments": .object([:])])
        }
        return .object(["applications": .object(apps)])
    }

    private func deploymentStatus(_ runtime: DeploymentRuntime, _ entries: [ReplicaEntry]) -> String {
        if runtime.backoff.isUnhealthy { return "UNHEALTHY" }
        let current = entries.filter { $0.record.specVersion == runtime.specVersion && $0.record.state != .stopping }
        let running = current.filter { $0.record.state == .running }.count
        let old = entries.contains { $0.record.specVersion != runtime.specVersion && $0.record.state != .stopping }
        if old || (!runtime.everRunning && running < runtime.target) { return "UPDATING" }
        if running < runtime.target { return "UPSCALING" }
        if current.count > runtime.target || entries.contains(where: { $0.record.state == .stopping }) { return "DOWNSCALING" }
        return "HEALTHY"
    }

    public func nodesJSON() -> JSONValue {
        let views = Dictionary(uniqueKeysWithValues: self.nodeViews().map { ($0.id, $0) })
        let byNode = self.replicasByNode()
        let nodes = self.nodes.values.sorted { $0.id < $1.id }.map { node -> JSONValue in
            let available = views[node.id]?.available ?? node.total
            return .object([
                "node_id": .string(node.id),
                "address": .string("\(node.address):\(node.port)"),
                "node_type": .string(node.nodeType),
                "state": .string(node.state.rawValue),
                "resources_total": Self.json(node.total),
                "resources_available": Self.json(node.state == .dead ? ResourceSet() : available),
                "labels": .object(node.labels.mapValues { .string($0) }),
                "http_address": node.proxy.flatMap { $0.httpAddress.isEmpty ? nil : JSONValue.string($0.httpAddress) } ?? .null,
                "proxy_status": .string(node.state == .dead ? "NONE" : Self.proxyStatus(node.proxy)),
                "proxy_message": .string(node.proxy?.message ?? ""),
                // The route table the proxy serves from ("epoch.sequence"; null before its first,
                // and for the head's own node, whose proxy is the head's): equal to
                // `route_table_version` once the head's newest table has reached the node.
                "proxy_table_version": node.proxy.flatMap { $0.tableEpoch == 0 ? nil : JSONValue.string("\($0.tableEpoch).\($0.tableSequence)") } ?? .null,
                "replicas": .array((byNode[node.id] ?? []).map(\.record.id).sorted().map { .string($0) }),
            ])
        }
        let version = self.routeUpdate.map { JSONValue.string("\($0.epoch).\($0.sequence)") } ?? .null
        return .object(["nodes": .array(nodes), "route_table_version": version])
    }

    /// STARTING, HEALTHY, UNHEALTHY, DRAINING, DRAINED; NONE where no proxy runs.
    static func proxyStatus(_ report: PBProxyReport?) -> String {
        switch report?.status {
        case .starting: "STARTING"
        case .healthy: "HEALTHY"
        case .unhealthy: "UNHEALTHY"
        case .draining: "DRAINING"
        case .drained: "DRAINED"
        case nil, .unspecified, .UNRECOGNIZED, .some(.none): "NONE"
        }
    }

    static func json(_ resources: ResourceSet) -> JSONValue {
        .object(resources.quantities.mapValues { .number($0.doubleValue) })
    }

    /// Handler names that some live worker can run (custom workers add their own).
    public func knownHandlerNames() -> Set<String> {
        self.nodes.values.filter { $0.state == .alive }.reduce(into: Set<String>()) { $0.formUnion($1.handlerNames) }
    }

    /// Moves a record along the replica lifecycle; a move it does not allow is a bug in the
    /// controller (the plan asked for it), logged, and not made.
    private func move(_ record: inout ReplicaRecord, to next: ReplicaState) -> Bool {
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

    /// Node ids and states (for tests and the CLI).
    public var nodeStates: [String: NodeState] { self.nodes.mapValues(\.state) }

    /// The data-plane address of the live node that runs replica `id` (nil: no such replica, or
    /// its node is gone).
    func dataPlaneAddress(ofReplica id: String) -> (host: String, port: Int)? {
        guard let nodeID = self.replicas[id]?.record.nodeID, let node = self.nodes[nodeID], node.state != .dead else { return nil }
        return (node.address, node.port)
    }
}

/// One decision, as `GET /api/serve/events` shows it.
public struct ServeEvent: Sendable {
    public enum Kind: String, Sendable { case deploy, scale, autoscale, replica, node, nodeAutoscale = "node_autoscale", warning }
    public var time: Date
    public var kind: Kind
    public var deployment: DeploymentID?
    public var before: Int
    public var after: Int
    public var reason: String

    var json: JSONValue {
        .object([
            "time": .number(self.time.timeIntervalSince1970),
            "kind": .string(self.kind.rawValue),
            "deployment": self.deployment.map { .string("\($0)") } ?? .null,
            "before": .number(Double(self.before)),
            "after": .number(Double(self.after)),
            "reason": .string(self.reason),
        ])
    }
}

extension ReconcileAction {
    fileprivate var isStop: Bool {
        if case .stop = self { true } else { false }
    }
}
