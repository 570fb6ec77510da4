import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServeCore
import ServeProto
import ServeProxy
import ServeWire
import Synchronization

/// What every simulated node shares: where the head is and what each node offers.
struct FleetOptions: Sendable {
    var headHost: String
    var headPort: Int
    var token: String
    var nodePrefix: String
    var startIndex: Int
    var resources: ResourceSet
    var labels: [String: String]
    var handlerNames: [String]
    /// Heartbeats this often instead of the interval the head's RegisterAnswer gives (the
    /// start value of `SimFleet.heartbeatOverride`).
    var heartbeatOverride: Duration?
    var heartbeats: HeartbeatMode
    var tables: TableMode
    /// The data-plane address every node advertises (never dialled: nothing listens there).
    var dataAddress: String
    var dataPortBase: Int
    /// Nodes started per second (0: all at once).
    var joinRate: Double
}

/// The queue length each replica reports, per deployment (`POST /load`).
struct LoadSettings: Sendable {
    var perDeployment: [DeploymentID: Int] = [:]
    /// For deployments not named.
    var fallback = 0

    func perReplica(_ deployment: DeploymentID) -> Int {
        self.perDeployment[deployment] ?? self.fallback
    }
}

/// Counters every node adds to.
final class FleetCounters: Sendable {
    let reconnects = Atomic<Int>(0)
    let refusals = Atomic<Int>(0)
    let heartbeats = Atomic<Int>(0)
    /// Worker messages sent, all kinds.
    let sent = Atomic<Int>(0)
    let pings = Atomic<Int>(0)
    let routes = Atomic<Int>(0)
    let starts = Atomic<Int>(0)
    let stops = Atomic<Int>(0)
    let reconfigures = Atomic<Int>(0)

    func received(_ message: HeadEnvelope) {
        if message.routes != nil {
            self.routes.add(1, ordering: .relaxed)
            return
        }
        switch message.kind {
        case .ping: self.pings.add(1, ordering: .relaxed)
        case .routes: self.routes.add(1, ordering: .relaxed)
        case .startReplica: self.starts.add(1, ordering: .relaxed)
        case .stopReplica: self.stops.add(1, ordering: .relaxed)
        case .reconfigureReplica: self.reconfigures.add(1, ordering: .relaxed)
        case .registerAnswer, .none: break
        }
    }
}

/// N simulated workers in one process, on one or two event loops, driven by one timer: it
/// staggers their heartbeats over the interval and samples the byte counters once a second.
final class SimFleet: Sendable {
    let options: FleetOptions
    let group: MultiThreadedEventLoopGroup
    let counters = FleetCounters()
    let loads = NIOLockedValueBox(LoadSettings())
    let startedAtUnixMs = SimNode.unixMs
    private let nodes = NIOLockedValueBox<[SimNode]>([])
    private let arrivals = NIOLockedValueBox(TableArrivals())
    /// The interval the head asked for (RegisterAnswer), in milliseconds; 0 before any answer.
    private let headIntervalMs = Atomic<Int>(0)
    /// The interval the nodes keep instead (`POST /heartbeat`), in milliseconds; 0: the head's.
    private let overrideMs: Synchronization.Atomic<Int>
    private let clock = NIOLockedValueBox(Clock())
    private let timer = NIOLockedValueBox<RepeatedTask?>(nil)

    /// The timer's position and the byte samples of the last seconds.
    struct Clock: Sendable {
        var started = ContinuousClock.now
        /// The last heartbeat slot handed out (slots are `tick` apart since `started`).
        var slot = -1
        var samples: [(t: Double, bytesIn: Int, bytesOut: Int)] = []
        var lastSample = -1.0
    }

    /// The timer's period: a heartbeat interval is split into slots this long.
    static let tick: Duration = .milliseconds(10)
    /// The window of the per-second byte rates (`GET /status`).
    static let rateWindow = 10.0

    init(options: FleetOptions, group: MultiThreadedEventLoopGroup) {
        self.options = options
        self.group = group
        self.overrideMs = Atomic(options.heartbeatOverride?.milliseconds ?? 0)
    }

    var heartbeatInterval: Duration {
        let override = self.overrideMs.load(ordering: .relaxed)
        if override > 0 { return .milliseconds(override) }
        let ms = self.headIntervalMs.load(ordering: .relaxed)
        return .milliseconds(ms > 0 ? ms : 500)
    }

    /// Heartbeats every `milliseconds` from now on (0: the head's interval).
    func setHeartbeatInterval(milliseconds: Int) {
        self.overrideMs.store(milliseconds, ordering: .relaxed)
    }

    var allNodes: [SimNode] { self.nodes.withLockedValue { $0 } }

    /// Starts the timer, and `count` nodes (at `joinRate` a second, when set).
    func start(count: Int) {
        let loop = self.group.next()
        let task = loop.scheduleRepeatedTask(initialDelay: .milliseconds(10), delay: .milliseconds(10)) { _ in self.onTick() }
        self.timer.withLockedValue { $0 = task }
        self.add(count)
    }

    /// Adds `count` nodes after the last; returns their ids.
    @discardableResult
    func add(_ count: Int) -> [String] {
        let added = self.nodes.withLockedValue { nodes -> [SimNode] in
            let first = nodes.count
            let fresh = (first..<first + count).map { position in
                SimNode(
                    index: position,
                    id: "\(self.options.nodePrefix)\(String(format: "%04d", self.options.startIndex + position))",
                    fleet: self,
                    loop: self.group.next())
            }
            nodes += fresh
            return fresh
        }
        let rate = self.options.joinRate
        if rate <= 0 {
            for node in added { node.start() }
        } else {
            Task {
                let started = ContinuousClock.now
                for (offset, node) in added.enumerated() {
                    let due = started + .milliseconds(Int(Double(offset) / rate * 1000))
                    if due > .now { try? await Task.sleep(until: due) }
                    node.start()
                }
            }
        }
        return added.map(\.id)
    }

    func registered(heartbeatIntervalMs: UInt32) {
        if heartbeatIntervalMs > 0 { self.headIntervalMs.store(Int(heartbeatIntervalMs), ordering: .relaxed) }
    }

    func tableArrived(_ version: TableVersion, replicas: Int, madeUnixMs: Int64) {
        let unixMs = SimNode.unixMs
        let monotonic = MonotonicTime.now
        self.arrivals.withLockedValue { $0.arrived(version, replicas: replicas, madeUnixMs: madeUnixMs, unixMs: unixMs, monotonic: monotonic) }
    }

    /// Hands out the heartbeat slots that came due since the last tick (however late the timer
    /// ran): node `index` sends in slot `index % slots`, so the nodes spread evenly over the
    /// interval. Once a second, samples the byte counters.
    private func onTick() {
        let interval = self.heartbeatInterval
        let slots = max(1, Int(interval / Self.tick))
        let (from, to, sample) = self.clock.withLockedValue { clock -> (Int, Int, Bool) in
            let elapsed = ContinuousClock.now - clock.started
            let now = Int(elapsed / Self.tick)
            let from = clock.slot + 1
            clock.slot = now
            let seconds = elapsed.seconds
            let sample = seconds - clock.lastSample >= 1
            if sample { clock.lastSample = seconds }
            // A stall longer than an interval sends each node one heartbeat, not several.
            return (max(from, now - slots + 1), now, sample)
        }
        if from <= to {
            let due = Set((from...to).map { $0 % slots })
            for node in self.allNodes where due.contains(node.index % slots) { node.heartbeatDue() }
        }
        if sample {
            let (bytesIn, bytesOut) = self.byteTotals()
            self.clock.withLockedValue { clock in
                let t = (ContinuousClock.now - clock.started).seconds
                clock.samples.append((t, bytesIn, bytesOut))
                clock.samples.removeAll { t - $0.t > Self.rateWindow + 0.5 }
            }
        }
    }

    func byteTotals() -> (Int, Int) {
        self.allNodes.reduce((0, 0)) { ($0.0 + $1.bytesIn.load(ordering: .relaxed), $0.1 + $1.bytesOut.load(ordering: .relaxed)) }
    }

    // MARK: controls

    /// Takes `fraction` of the registered nodes out (or `count` of them), spread evenly over the
    /// fleet from the `offset`th on (another offset picks other nodes); returns their ids.
    func kill(fraction: Double?, count: Int?, offset: Int = 0, mode: KillMode) -> [String] {
        let candidates = self.allNodes.filter { $0.snapshot.phase == .registered }
        guard !candidates.isEmpty else { return [] }
        let wanted = min(candidates.count, max(0, count ?? Int((Double(candidates.count) * (fraction ?? 0)).rounded())))
        guard wanted > 0 else { return [] }
        let stride = Double(candidates.count) / Double(wanted)
        let chosen = (0..<wanted).map { candidates[(Int(Double($0) * stride) + max(0, offset)) % candidates.count] }
        return chosen.filter { $0.kill(mode) }.map(\.id)
    }

    /// Brings back the killed nodes (those named, or all); returns their ids.
    func rejoin(_ ids: Set<String>?) -> [String] {
        self.allNodes.filter { ids?.contains($0.id) ?? true }.filter { $0.rejoin() }.map(\.id)
    }

    func setLoad(_ deployment: DeploymentID?, perReplica: Int) {
        self.loads.withLockedValue { loads in
            if let deployment {
                loads.perDeployment[deployment] = perReplica
            } else {
                loads.perDeployment = [:]
                loads.fallback = perReplica
            }
        }
    }

    // MARK: status

    func statusJSON() -> JSONValue {
        let nodes = self.allNodes
        let snapshots = nodes.map(\.snapshot)
        var phases: [String: Int] = [:]
        var replicaStates: [String: Int] = [:]
        var replicasByDeployment: [String: Int] = [:]
        var holding: [TableVersion: Int] = [:]
        var noTable = 0
        var lastErrors: [String: Int] = [:]
        var onKilled = 0
        for state in snapshots {
            phases[state.phase.rawValue, default: 0] += 1
            // A node playing dead keeps its replicas (silent), but they are not the cluster's.
            if state.killed != nil { onKilled += state.replicas.count; continue }
            for replica in state.replicas.values {
                replicaStates[Self.name(replica.state), default: 0] += 1
                replicasByDeployment["\(replica.deployment.app)/\(replica.deployment.name)", default: 0] += 1
            }
            if state.phase == .registered {
                if let version = state.table.version { holding[version, default: 0] += 1 } else { noTable += 1 }
            }
            if let error = state.lastError { lastErrors[String(error.prefix(200)), default: 0] += 1 }
        }
        let registered = phases[Phase.registered.rawValue] ?? 0
        let arrivals = self.arrivals.withLockedValue { $0.all }
        let latest = arrivals.last?.version
        let (bytesIn, bytesOut) = self.byteTotals()
        let samples = self.clock.withLockedValue { $0.samples }
        var rates: JSONValue = .null
        if let first = samples.first, let last = samples.last, last.t > first.t {
            let seconds = last.t - first.t
            let perNode = Double(max(1, registered))
            rates = .object([
                "window_s": .number(seconds),
                "received_per_s": .number(Double(last.bytesIn - first.bytesIn) / seconds),
                "sent_per_s": .number(Double(last.bytesOut - first.bytesOut) / seconds),
                "received_per_node_per_s": .number(Double(last.bytesIn - first.bytesIn) / seconds / perNode),
                "sent_per_node_per_s": .number(Double(last.bytesOut - first.bytesOut) / seconds / perNode),
            ])
        }
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        let c = self.counters
        return .object([
            "now_unix_ms": .number(Double(SimNode.unixMs)),
            "now_monotonic_s": .number(MonotonicTime.now),
            "heartbeat_interval_ms": .number(Double(self.heartbeatInterval.milliseconds)),
            "head_heartbeat_interval_ms": .number(Double(self.headIntervalMs.load(ordering: .relaxed))),
            "heartbeats_mode": .string(self.options.heartbeats.rawValue),
            "tables_mode": .string(self.options.tables.rawValue),
            "cpu_seconds": .number(cpu),
            "nodes": .object([
                "total": .number(Double(nodes.count)),
                "registered": .number(Double(registered)),
                "connecting": .number(Double(phases[Phase.connecting.rawValue] ?? 0)),
                "killed": .number(Double(phases[Phase.killed.rawValue] ?? 0)),
                "refused": .number(Double(phases[Phase.refused.rawValue] ?? 0)),
                "without_table": .number(Double(noTable)),
            ]),
            "replicas": .object(replicaStates.mapValues { .number(Double($0)) }),
            "replicas_total": .number(Double(snapshots.reduce(0) { $0 + ($1.killed == nil ? $1.replicas.count : 0) })),
            "replicas_on_killed": .number(Double(onKilled)),
            "replicas_by_deployment": .object(replicasByDeployment.mapValues { .number(Double($0)) }),
            "tables": .object([
                "latest": latest.map { .string("\($0)") } ?? .null,
                "holding_latest": .number(Double(latest.flatMap { holding[$0] } ?? 0)),
                "holding": .object(Dictionary(uniqueKeysWithValues: holding.map { ("\($0.key)", JSONValue.number(Double($0.value))) })),
                "versions": .array(arrivals.map { arrival in
                    .object([
                        "version": .string("\(arrival.version)"),
                        "epoch": .number(Double(arrival.version.epoch)),
                        "sequence": .number(Double(arrival.version.sequence)),
                        "replicas": .number(Double(arrival.replicas)),
                        "applied": .number(Double(arrival.applied)),
                        "holding": .number(Double(holding[arrival.version] ?? 0)),
                        "first_unix_ms": .number(Double(arrival.firstUnixMs)),
                        "last_unix_ms": .number(Double(arrival.lastUnixMs)),
                        "first_monotonic_s": .number(arrival.firstMonotonic),
                        "last_monotonic_s": .number(arrival.lastMonotonic),
                        "spread_ms": .number((arrival.lastMonotonic - arrival.firstMonotonic) * 1000),
                        "made_unix_ms": .number(Double(arrival.madeUnixMs)),
                        "delivery_ms": arrival.madeUnixMs > 0 ? .number(Double(arrival.lastUnixMs - arrival.madeUnixMs)) : .null,
                    ])
                }),
            ]),
            "bytes": .object([
                "received": .number(Double(bytesIn)),
                "sent": .number(Double(bytesOut)),
                "rates": rates,
            ]),
            "messages": .object([
                "heartbeats_sent": .number(Double(c.heartbeats.load(ordering: .relaxed))),
                "sent": .number(Double(c.sent.load(ordering: .relaxed))),
                "pings": .number(Double(c.pings.load(ordering: .relaxed))),
                "routes": .number(Double(c.routes.load(ordering: .relaxed))),
                "starts": .number(Double(c.starts.load(ordering: .relaxed))),
                "stops": .number(Double(c.stops.load(ordering: .relaxed))),
                "reconfigures": .number(Double(c.reconfigures.load(ordering: .relaxed))),
            ]),
            "reconnects": .number(Double(c.reconnects.load(ordering: .relaxed))),
            "refusals": .number(Double(c.refusals.load(ordering: .relaxed))),
            "last_errors": .object(lastErrors.mapValues { .number(Double($0)) }),
        ])
    }

    /// One entry per node (`GET /nodes`).
    func nodesJSON() -> JSONValue {
        .object(["nodes": .array(self.allNodes.map { node in
            let state = node.snapshot
            return .object([
                "node_id": .string(node.id),
                "phase": .string(state.phase.rawValue),
                "killed": state.killed.map { .string($0.rawValue) } ?? .null,
                "table_version": state.table.version.map { JSONValue.string("\($0)") } ?? .null,
                "replicas": .array(state.replicas.keys.sorted().map { .string($0) }),
                "bytes_received": .number(Double(node.bytesIn.load(ordering: .relaxed))),
                "bytes_sent": .number(Double(node.bytesOut.load(ordering: .relaxed))),
                "last_error": state.lastError.map { .string($0) } ?? .null,
            ])
        })])
    }

    static func name(_ state: PBReplicaState) -> String {
        switch state {
        case .pending: "PENDING"
        case .starting: "STARTING"
        case .running: "RUNNING"
        case .stopping: "STOPPING"
        case .stopped: "STOPPED"
        case .failed: "FAILED"
        case .unspecified, .UNRECOGNIZED: "UNSPECIFIED"
        }
    }

    typealias Phase = SimNode.Phase
}

extension Duration {
    var milliseconds: Int { Int(self.seconds * 1000) }
}
