import Foundation

/// A node as the head's controller sees it, for the node planner.
public struct ObservedNode: Sendable, Hashable {
    /// Its resources, what is free and how many replicas it hosts (STOPPING ones included).
    public var view: NodeView
    /// `--node-type` ("head" for the head's own node, "" for a worker started without one).
    public var nodeType: String
    /// Replicas per deployment ("app/name"), for demands with `max_replicas_per_node`.
    public var replicasByGroup: [String: Int]

    public init(view: NodeView, nodeType: String, replicasByGroup: [String: Int] = [:]) {
        self.view = view
        self.nodeType = nodeType
        self.replicasByGroup = replicasByGroup
    }

    public var id: String { self.view.id }
    public var isHead: Bool { self.nodeType == "head" }
}

/// One PENDING replica's need, as the node planner packs it.
public struct ResourceDemand: Sendable, Hashable {
    public var resources: ResourceSet
    /// Its deployment ("app/name"): the group `maxPerNode` counts within.
    public var group: String
    /// The deployment's `max_replicas_per_node`.
    public var maxPerNode: Int?

    public init(resources: ResourceSet, group: String, maxPerNode: Int? = nil) {
        self.resources = resources
        self.group = group
        self.maxPerNode = maxPerNode
    }
}

/// A node the provider reports as not terminated (launching or running).
public struct ProviderNodeRecord: Sendable, Hashable {
    public var nodeID: String
    public var nodeType: String

    public init(nodeID: String, nodeType: String) {
        self.nodeID = nodeID
        self.nodeType = nodeType
    }
}

/// Where a node the autoscaler launched is in its life (issue 6 "Lifecycle").
public enum ManagedNodeState: String, Sendable, Hashable, CaseIterable {
    /// Asked of the provider; its answer has not come back.
    case requested = "REQUESTED"
    /// The provider accepted it; it has not registered with the head yet.
    case booting = "BOOTING"
    /// Registered (matched by the node id the provider passed to the worker).
    case joined = "JOINED"
    /// Taking no new replicas; its termination is asked of the provider.
    case draining = "DRAINING"
    /// Gone (kept only in events).
    case terminated = "TERMINATED"

    /// The legal transitions (as SWIM's `Status` lists them): any state may end in
    /// `terminated` (a failed launch, a node that exits); otherwise forward only, except that a
    /// drain the controller refuses (a replica landed on the node meanwhile) returns it to
    /// `joined`.
    public var legalNext: Set<ManagedNodeState> {
        switch self {
        case .requested: [.booting, .terminated]
        case .booting: [.joined, .draining, .terminated]
        case .joined: [.draining, .terminated]
        case .draining: [.joined, .terminated]
        case .terminated: []
        }
    }
}

/// A node launched (or adopted) by the autoscaler.
public struct ManagedNode: Sendable, Hashable {
    public var id: String
    public var nodeType: String
    public var state: ManagedNodeState
    public var requestID: String
    /// Why it was launched.
    public var reason: String
    public var launchedAt: Double
    public var joinedAt: Double?
    /// Since when it has hosted nothing (joined nodes only).
    public var idleSince: Double?
    /// The provider has listed it (or answered its launch with it): once seen, missing from the
    /// provider's list means it is gone.
    public var seenByProvider = false
    /// A termination is being asked of the provider now.
    public var terminating = false
    /// After a failed termination, when to ask again.
    public var retryTerminateAt: Double?

    /// Every state change goes through here, so an illegal one is caught where it happens.
    mutating func move(to next: ManagedNodeState) {
        assert(self.state.legalNext.contains(next), "node \(self.id): \(self.state) → \(next) is not a legal transition")
        self.state = next
    }
}

public struct NodeLaunch: Sendable, Hashable {
    public var requestID: String
    public var nodeType: String
    public var nodeIDs: [String]
    public var reason: String
}

/// Drain the node (the controller refuses if it hosts replicas), then ask the provider to
/// terminate it.
public struct NodeTermination: Sendable, Hashable {
    public var requestID: String
    public var nodeID: String
    public var nodeType: String
    public var reason: String
}

/// What the node planner asks of its shell (the head's `NodeAutoscaler` actor).
public enum NodeDirective: Sendable, Hashable {
    case launch(NodeLaunch)
    case terminate(NodeTermination)
    /// A decision or observation to record as an event (infeasible demands, joins, failures).
    case report(String)
}

/// Demands the planner could not cover this pass, with the reason a person reads.
public struct UnmetDemand: Sendable, Hashable {
    public var resources: ResourceSet
    public var group: String
    public var count: Int
    public var reason: String
}

/// The node autoscaler's decisions, as a value with no I/O and time as an input (STYLE.md: the
/// SWIM instance/shell split). The shell feeds it what the controller and the provider see on
/// each tick and the outcome of every provider call, and carries out the directives it returns.
///
/// Each `tick`, in the order of Ray's autoscaler v2 (PEERS.md §6):
/// 1. Lifecycle: launched nodes that registered are JOINED; those that the provider stopped
///    listing before they joined, or that did not join within `launch_timeout_s`, are dropped
///    (terminated) and their type backs off (1 s, doubling to 60 s) before the next launch;
///    joined nodes that left the cluster are terminated.
/// 2. `min_workers` of every type are kept.
/// 3. Demands (PENDING replicas), largest first, are packed onto free room on the nodes there
///    are, then onto launches in flight, then onto new nodes of the type that fits best: one
///    that has all of the demand, GPU types only for demands that need a GPU when another type
///    fits, then the smallest (the highest share of its dominant resource used), then the
///    config's order. New nodes stay within each type's `max_workers` and the global
///    `max_workers`; launches in flight within `max_concurrent_launches` and
///    `max(5, ceil(upscaling_speed × nodes))`. Demands that no type can hold are infeasible:
///    reported once, not launched for.
/// 4. Nodes that hosted nothing for `idle_timeout_s` are terminated (never below `min_workers`,
///    never the head, never a node a demand was just packed onto), longest idle first.
public struct NodePlanner: Sendable {
    public let config: ClusterConfig
    /// Every node launched or adopted and not yet terminated, by node id.
    public private(set) var nodes: [String: ManagedNode] = [:]
    /// Demands waiting for a launch this pass allowed no room for (rate limit, max_workers,
    /// backoff).
    public private(set) var waiting: [UnmetDemand] = []
    /// Demands no node type can hold.
    public private(set) var infeasible: [UnmetDemand] = []

    private let idPrefix: String
    private var sequence = 0
    private var reportedInfeasible: Set<String> = []
    private var failures: [String: (count: Int, retryAt: Double)] = [:]
    /// Recently terminated ids: a provider that still lists one does not get it adopted again,
    /// and the controller still showing one (DRAINING until its stream ends) does not count it
    /// as a worker someone else started.
    private var terminatedIDs: [String] = []

    /// Launch retries back off from this, doubling to `maximumBackoffS`.
    public static let baseBackoffS = 1.0
    public static let maximumBackoffS = 60.0
    /// A failed termination is asked again after this.
    public static let terminateRetryS = 5.0

    /// `idPrefix` makes node and request ids unique to this head's run (the shell passes a
    /// random one; tests a fixed one).
    public init(config: ClusterConfig, idPrefix: String) {
        self.config = config
        self.idPrefix = idPrefix
    }

    // MARK: events from the shell

    /// The provider accepted a launch; `listed` are the ids its answer named.
    public mutating func launchSucceeded(requestID: String, listed: Set<String>) {
        for id in self.nodes.keys where self.nodes[id]!.requestID == requestID && self.nodes[id]!.state == .requested {
            self.nodes[id]!.move(to: .booting)
            if listed.contains(id) { self.nodes[id]!.seenByProvider = true }
        }
    }

    /// The provider refused or failed a launch: its nodes are dropped and the type backs off.
    /// Returns the event's reason.
    public mutating func launchFailed(requestID: String, error: String, now: Double) -> String {
        let dropped = self.nodes.values.filter { $0.requestID == requestID }
        for node in dropped { self.forget(node.id) }
        guard let type = dropped.first?.nodeType else { return "launch \(requestID) failed: \(error)" }
        let delay = self.backOff(type, now: now)
        return "launch of \(dropped.count) × \(type) failed (retrying in \(Self.seconds(delay))): \(error)"
    }

    /// The provider terminated the node.
    public mutating func terminateSucceeded(nodeID: String) {
        self.forget(nodeID)
    }

    /// The provider failed to terminate the node: it stays DRAINING and is asked again later.
    public mutating func terminateFailed(nodeID: String, now: Double) {
        guard self.nodes[nodeID] != nil else { return }
        self.nodes[nodeID]!.terminating = false
        self.nodes[nodeID]!.retryTerminateAt = now + Self.terminateRetryS
    }

    /// The controller would not drain the node (a replica was placed on it meanwhile).
    public mutating func drainRefused(nodeID: String) {
        guard var node = self.nodes[nodeID], node.state == .draining else { return }
        node.move(to: .joined)
        node.terminating = false
        node.idleSince = nil
        self.nodes[nodeID] = node
    }

    // MARK: the pass

    /// One pass. `providerNodes` is the provider's list of non-terminated nodes, or nil when
    /// listing failed this time (then nothing is concluded from absence).
    public mutating func tick(
        now: Double,
        observed: [ObservedNode],
        demands: [ResourceDemand],
        providerNodes: [ProviderNodeRecord]?
    ) -> [NodeDirective] {
        var directives: [NodeDirective] = []
        let observedByID = Dictionary(observed.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        self.updateLifecycle(now: now, observedByID: observedByID, providerNodes: providerNodes, into: &directives)
        var pass = self.beginPass(observed: observed)
        self.openMinWorkers(&pass, now: now)
        self.pack(demands, into: &pass, now: now)
        directives += self.launchOpened(&pass, now: now)
        directives += self.recordUnmet(pass)
        directives += self.terminateIdle(active: pass.active, used: pass.used, now: now)
        return directives
    }

    /// The pass's starting counts and bins: every node there is and every launch in flight.
    private func beginPass(observed: [ObservedNode]) -> PlannerPass {
        let launching = self.nodes.values.filter { $0.state == .requested || $0.state == .booting }
        var pass = PlannerPass(
            bins: Bins(observed: observed, inFlight: launching, config: self.config),
            maxWorkers: self.config.maxWorkers
        )
        for node in self.nodes.values {
            pass.count[node.nodeType, default: 0] += 1
            if node.state != .draining { pass.active[node.nodeType, default: 0] += 1 }
        }
        for node in observed where self.nodes[node.id] == nil && !node.isHead && node.view.state != .dead
            && self.config.nodeType(named: node.nodeType) != nil && !self.terminatedIDs.contains(node.id)
        {
            pass.count[node.nodeType, default: 0] += 1
            if node.view.state == .alive { pass.active[node.nodeType, default: 0] += 1 }
        }
        pass.total = pass.count.values.reduce(0, +)
        pass.allowed = self.allowedInFlight(running: observed.filter { $0.view.state == .alive }.count)
        pass.budget = max(0, pass.allowed - launching.count)
        return pass
    }

    /// Opens nodes up to each type's `min_workers` (types backing off after a failed launch wait).
    private func openMinWorkers(_ pass: inout PlannerPass, now: Double) {
        for type in self.config.nodeTypes where self.backoffRemaining(type.name, now: now) == nil {
            while pass.active[type.name, default: 0] < type.minWorkers && pass.hasHeadroom(type) {
                pass.active[type.name, default: 0] += 1
                pass.open(type, reason: "min_workers \(type.minWorkers) for \(type.name)")
            }
        }
    }

    /// Demands, largest first: onto free room on the nodes there are, then onto launches in
    /// flight (the ones this pass opened included), then onto a new node of the best type that
    /// may launch; the rest are waiting or infeasible.
    private func pack(_ demands: [ResourceDemand], into pass: inout PlannerPass, now: Double) {
        for demand in demands.sorted(by: Self.largestFirst) {
            if let nodeID = pass.bins.placeOnExisting(demand) {
                pass.used.insert(nodeID)
                continue
            }
            if pass.packOnLaunching(demand) { continue }
            let candidates = self.typesThatFit(demand)
            guard !candidates.isEmpty else {
                PlannerPass.note(demand, self.infeasibleReason(demand), in: &pass.infeasible)
                continue
            }
            let (chosen, reasons) = self.typeToLaunch(candidates, pass: pass, now: now)
            guard let type = chosen else {
                let reason = "no node can be launched: " + reasons.joined(separator: "; ")
                PlannerPass.note(demand, reason, in: &pass.waiting)
                continue
            }
            pass.open(type, reason: nil)
            _ = pass.packOnLaunching(demand)
        }
    }

    /// The first of `candidates` (best first) that may launch a node now; else nil, with why
    /// each may not.
    private func typeToLaunch(
        _ candidates: [NodeTypeConfig],
        pass: PlannerPass,
        now: Double
    ) -> (NodeTypeConfig?, reasons: [String]) {
        var reasons: [String] = []
        for type in candidates {
            if let remaining = self.backoffRemaining(type.name, now: now) {
                reasons.append("\(type.name): a launch failed, retrying in \(Self.seconds(remaining))")
            } else if pass.count[type.name, default: 0] >= type.maxWorkers {
                reasons.append("\(type.name) at max_workers \(type.maxWorkers)")
            } else if let global = self.config.maxWorkers, pass.total >= global {
                reasons.append("the cluster at max_workers \(global)")
            } else {
                return (type, reasons)
            }
        }
        return (nil, reasons)
    }

    /// The launch-rate limit, then one launch per type: nodes this pass opened beyond the budget
    /// wait for a later pass (their demands are reported waiting); the others are REQUESTED.
    private mutating func launchOpened(_ pass: inout PlannerPass, now: Double) -> [NodeDirective] {
        var launches: [String: (ids: [String], reasons: [String], demands: [ResourceDemand])] = [:]
        var typeOrder: [String] = []
        for (index, node) in pass.opened.enumerated() {
            guard index < pass.budget else {
                let reason = "launch rate limit: at most \(pass.allowed) launch(es) in flight"
                for demand in node.demands { PlannerPass.note(demand, reason, in: &pass.waiting) }
                continue
            }
            self.sequence += 1
            if launches[node.type] == nil { typeOrder.append(node.type) }
            launches[node.type, default: ([], [], [])].ids.append("\(node.type)-\(self.idPrefix)-\(self.sequence)")
            if let reason = node.reason { launches[node.type]!.reasons.append(reason) }
            launches[node.type]!.demands += node.demands
        }
        return typeOrder.map { type in
            let launch = launches[type]!
            return self.requestLaunch(
                of: type, ids: launch.ids, reasons: launch.reasons, demands: launch.demands, now: now)
        }
    }

    /// Records the nodes of one launch as REQUESTED and returns the launch to ask of the provider.
    private mutating func requestLaunch(
        of type: String,
        ids: [String],
        reasons: [String],
        demands: [ResourceDemand],
        now: Double
    ) -> NodeDirective {
        self.sequence += 1
        let requestID = "launch-\(self.idPrefix)-\(self.sequence)"
        let reason = Self.mergeReasons(reasons + (demands.isEmpty ? [] : [Self.describe(demands)]))
        for id in ids {
            self.nodes[id] = ManagedNode(
                id: id, nodeType: type, state: .requested, requestID: requestID, reason: reason, launchedAt: now)
        }
        return .launch(NodeLaunch(requestID: requestID, nodeType: type, nodeIDs: ids, reason: reason))
    }

    /// Keeps the pass's unmet demands for the status; infeasible ones are reported once while
    /// they last.
    private mutating func recordUnmet(_ pass: PlannerPass) -> [NodeDirective] {
        let infeasible = pass.infeasible
        let fresh = infeasible.keys.sorted().filter { !self.reportedInfeasible.contains($0) }
        let directives: [NodeDirective] = fresh.map { key in
            let demand = infeasible[key]!
            return .report(
                "infeasible: \(demand.count) pending replica(s) of \(demand.group) need \(demand.resources); \(demand.reason)")
        }
        self.reportedInfeasible = Set(infeasible.keys)
        self.infeasible = infeasible.keys.sorted().map { infeasible[$0]! }
        self.waiting = pass.waiting.keys.sorted().map { pass.waiting[$0]! }
        return directives
    }

    /// Terminates nodes idle past `idle_timeout_s`, longest idle first, while their type keeps
    /// `min_workers` (`active` counts them); nodes in `used` just had a demand packed onto them.
    private mutating func terminateIdle(active: [String: Int], used: Set<String>, now: Double) -> [NodeDirective] {
        var active = active
        let idle = self.nodes.values
            .filter { $0.state == .joined && !used.contains($0.id) && $0.idleSince.map { now - $0 >= self.config.idleTimeoutS } == true }
            .sorted { ($0.idleSince!, $0.id) < ($1.idleSince!, $1.id) }
        var directives: [NodeDirective] = []
        for node in idle {
            let minimum = self.config.nodeType(named: node.nodeType)?.minWorkers ?? 0
            guard active[node.nodeType, default: 0] > minimum else { continue }
            active[node.nodeType, default: 0] -= 1
            let reason = "idle for \(Self.seconds(now - node.idleSince!)) (idle_timeout_s \(Self.seconds(self.config.idleTimeoutS)))"
            directives.append(.terminate(self.beginTermination(node.id, reason: reason)))
        }
        return directives
    }

    // MARK: lifecycle

    /// Launched nodes that joined, left, vanished from the provider's list or timed out; DRAINING
    /// ones whose termination is due again; nodes the provider runs that this head did not know.
    private mutating func updateLifecycle(
        now: Double,
        observedByID: [String: ObservedNode],
        providerNodes: [ProviderNodeRecord]?,
        into directives: inout [NodeDirective]
    ) {
        let listed = providerNodes.map { Set($0.map(\.nodeID)) }
        for id in self.nodes.keys.sorted() {
            if let listed, let gone = self.checkListing(id, listed: listed, now: now) {
                directives.append(gone)
                continue
            }
            if let directive = self.advance(id, seen: observedByID[id], now: now) {
                directives.append(directive)
            }
        }
        directives += self.adoptUnknown(providerNodes ?? [], now: now)
    }

    /// A node the provider listed before and lists no more is gone (unless its termination is
    /// under way): it is dropped, and a booting one backs its type off. Returns the event then.
    private mutating func checkListing(_ id: String, listed: Set<String>, now: Double) -> NodeDirective? {
        let node = self.nodes[id]!
        if listed.contains(id) {
            self.nodes[id]!.seenByProvider = true
            return nil
        }
        guard node.seenByProvider && !node.terminating && (node.state == .booting || node.state == .joined) else { return nil }
        self.forget(id)
        guard node.state == .booting else {
            return .report("node \(id) (\(node.nodeType)) is gone: the provider no longer lists it")
        }
        let delay = self.backOff(node.nodeType, now: now)
        return .report("node \(id) (\(node.nodeType)) exited before joining; launching a replacement in \(Self.seconds(delay))")
    }

    /// One node's step in its lifecycle, from what the controller sees of it (`seen`).
    private mutating func advance(_ id: String, seen: ObservedNode?, now: Double) -> NodeDirective? {
        var node = self.nodes[id]!
        switch node.state {
        case .requested, .terminated:
            return nil
        case .booting:
            if let seen, seen.view.state == .alive {
                node.move(to: .joined)
                node.joinedAt = now
                node.idleSince = seen.view.replicaCount == 0 ? now : nil
                self.nodes[id] = node
                self.failures[node.nodeType] = nil
                return .report("node \(id) (\(node.nodeType)) joined \(Self.seconds(now - node.launchedAt)) after its launch")
            }
            guard now - node.launchedAt >= self.config.launchTimeoutS else { return nil }
            let delay = self.backOff(node.nodeType, now: now)
            let reason = "did not join within launch_timeout_s \(Self.seconds(self.config.launchTimeoutS)); a replacement follows in \(Self.seconds(delay))"
            return .terminate(self.beginTermination(id, reason: reason))
        case .joined:
            guard let seen, seen.view.state != .dead else {
                return .terminate(self.beginTermination(id, reason: "it left the cluster"))
            }
            self.nodes[id]!.idleSince = seen.view.replicaCount == 0 ? (node.idleSince ?? now) : nil
            return nil
        case .draining:
            guard !node.terminating, node.retryTerminateAt.map({ now >= $0 }) ?? true else { return nil }
            return .terminate(self.beginTermination(id, reason: "retrying its termination"))
        }
    }

    /// Nodes the provider runs that this head does not know (a head restarted beside a command
    /// provider's machines): adopted, so they are counted and, if they never join, given back.
    private mutating func adoptUnknown(_ providerNodes: [ProviderNodeRecord], now: Double) -> [NodeDirective] {
        var directives: [NodeDirective] = []
        for record in providerNodes where self.nodes[record.nodeID] == nil && !self.terminatedIDs.contains(record.nodeID)
            && self.config.nodeType(named: record.nodeType) != nil
        {
            var node = ManagedNode(
                id: record.nodeID, nodeType: record.nodeType, state: .booting, requestID: "adopted",
                reason: "adopted from the provider's list", launchedAt: now)
            node.seenByProvider = true
            self.nodes[record.nodeID] = node
            directives.append(.report("adopted node \(record.nodeID) (\(record.nodeType)) that the provider lists"))
        }
        return directives
    }

    private mutating func beginTermination(_ id: String, reason: String) -> NodeTermination {
        var node = self.nodes[id]!
        if node.state != .draining { node.move(to: .draining) }
        node.terminating = true
        node.retryTerminateAt = nil
        self.nodes[id] = node
        return NodeTermination(requestID: "terminate-\(id)", nodeID: id, nodeType: node.nodeType, reason: reason)
    }

    /// The node is TERMINATED: it leaves the table (its history is in the events).
    private mutating func forget(_ id: String) {
        guard var node = self.nodes.removeValue(forKey: id) else { return }
        node.move(to: .terminated)
        self.terminatedIDs.append(id)
        if self.terminatedIDs.count > 1000 { self.terminatedIDs.removeFirst(self.terminatedIDs.count - 1000) }
    }

    /// Records a failure of `type`'s launches; returns the delay before the next one.
    private mutating func backOff(_ type: String, now: Double) -> Double {
        let failures = (self.failures[type]?.count ?? 0) + 1
        let delay = min(Self.maximumBackoffS, Self.baseBackoffS * pow(2, Double(failures - 1)))
        self.failures[type] = (failures, now + delay)
        return delay
    }

    /// Seconds until `type` may launch again, or nil when it may now.
    public func backoffRemaining(_ type: String, now: Double) -> Double? {
        guard let retryAt = self.failures[type]?.retryAt, retryAt > now else { return nil }
        return retryAt - now
    }

    /// Launches that may be in flight: `upscaling_speed` × the nodes in the cluster, at least 5
    /// (Ray's documented floor), at most `max_concurrent_launches`.
    public func allowedInFlight(running: Int) -> Int {
        let scaled = (self.config.upscalingSpeed * Double(max(running, 1))).rounded(.up)
        return min(self.config.maxConcurrentLaunches, max(5, Int(min(scaled, 1e9))))
    }

    // MARK: choosing types

    /// Types an empty node of which holds `demand`, best first.
    func typesThatFit(_ demand: ResourceDemand) -> [NodeTypeConfig] {
        let wantsGPU = demand.resources[ResourceSet.gpu] > .zero
        let fitting = self.config.nodeTypes.enumerated().filter { _, type in
            type.maxWorkers > 0 && (demand.maxPerNode ?? 1) > 0
                && Placement.choose(demand: demand.resources, nodes: [Bins.emptyView(type, id: type.name)]) == .node(type.name)
        }
        func key(_ type: NodeTypeConfig) -> (Int, Int64) {
            let spendsGPU = !wantsGPU && type.resources[ResourceSet.gpu] > .zero ? 1 : 0
            // The dominant share in ten-thousandths: higher is a tighter fit.
            var share: Int64 = 0
            for (name, quantity) in demand.resources.quantities where type.resources[name] > .zero {
                share = max(share, quantity.units * 10_000 / type.resources[name].units)
            }
            return (spendsGPU, -share)
        }
        return fitting.sorted { lhs, rhs in
            let (a, b) = (key(lhs.element), key(rhs.element))
            return a != b ? a < b : lhs.offset < rhs.offset
        }.map(\.element)
    }

    func infeasibleReason(_ demand: ResourceDemand) -> String {
        if demand.maxPerNode == 0 { return "max_replicas_per_node is 0" }
        let lacks = self.config.nodeTypes.map { type -> String in
            let short = demand.resources.shortfall(in: type.resources).map { "\($0.name) \($0.needed)" }
            return short.isEmpty ? "\(type.name) is at max_workers 0" : "\(type.name) lacks \(short.joined(separator: ", "))"
        }
        return "no node type can hold it (\(lacks.joined(separator: "; ")))"
    }

    // MARK: helpers

    static func key(_ demand: ResourceDemand) -> String {
        "\(demand.group)|\(demand.resources)|\(demand.maxPerNode.map(String.init) ?? "")"
    }

    /// Largest first, as Ray sorts resource requests: GPU demands, then more kinds of resource,
    /// then more CPU, then more of everything; ties by group so the order is stable.
    static func largestFirst(_ lhs: ResourceDemand, _ rhs: ResourceDemand) -> Bool {
        func key(_ demand: ResourceDemand) -> (Int64, Int, Int64, Int64) {
            let resources = demand.resources
            let sum = resources.quantities.values.reduce(Int64(0)) { $0 &+ min($1.units, Int64.max / 1024) }
            return (resources[ResourceSet.gpu].units, resources.quantities.count, resources[ResourceSet.cpu].units, sum)
        }
        let (a, b) = (key(lhs), key(rhs))
        if a != b { return a > b }
        return lhs.group < rhs.group
    }

    /// "for 3 pending replica(s): 2 × app/A (CPU: 1), 1 × app/B (CPU: 2)".
    static func describe(_ demands: [ResourceDemand]) -> String {
        var counts: [String: Int] = [:]
        var order: [String] = []
        for demand in demands {
            let label = "\(demand.group) (\(demand.resources))"
            if counts[label] == nil { order.append(label) }
            counts[label, default: 0] += 1
        }
        return "for \(demands.count) pending replica(s): " + order.map { "\(counts[$0]!) × \($0)" }.joined(separator: ", ")
    }

    static func mergeReasons(_ reasons: [String]) -> String {
        var seen: Set<String> = []
        return reasons.filter { seen.insert($0).inserted }.joined(separator: "; ")
    }

    /// "2 s", "0.5 s", "300 s".
    static func seconds(_ value: Double) -> String {
        "\(ResourceQuantity((value * 10).rounded() / 10)) s"
    }
}

/// One `NodePlanner.tick`'s working state: nodes per type, the nodes the pass opens, the packing
/// and the demands it leaves unmet.
private struct PlannerPass {
    /// Nodes per type that count toward `max_workers`: ours not yet terminated, plus workers
    /// someone started by hand with a configured type (they count; they are not ours to stop).
    var count: [String: Int] = [:]
    /// Of those, the ones not draining: what `min_workers` and idle termination count.
    var active: [String: Int] = [:]
    var total = 0
    /// Launches that may be in flight, and how many this pass may add.
    var allowed = 0
    var budget = 0
    /// Nodes this pass opens, in order: `min_workers` ones first, then those for demands.
    var opened: [(type: String, reason: String?, demands: [ResourceDemand])] = []
    var bins: Bins
    let maxWorkers: Int?
    var waiting: [String: UnmetDemand] = [:]
    var infeasible: [String: UnmetDemand] = [:]
    /// Nodes there are that a demand was packed onto: not idle, whatever their timer says.
    var used: Set<String> = []

    init(bins: Bins, maxWorkers: Int?) {
        self.bins = bins
        self.maxWorkers = maxWorkers
    }

    /// Whether a node of `type` stays within its `max_workers` and the cluster's.
    func hasHeadroom(_ type: NodeTypeConfig) -> Bool {
        self.count[type.name, default: 0] < type.maxWorkers && self.total < (self.maxWorkers ?? Int.max)
    }

    mutating func open(_ type: NodeTypeConfig, reason: String?) {
        self.count[type.name, default: 0] += 1
        self.total += 1
        self.opened.append((type.name, reason, []))
        self.bins.open(type)
    }

    /// Packs onto a launch in flight; one this pass opened carries the demand into its reason.
    mutating func packOnLaunching(_ demand: ResourceDemand) -> Bool {
        guard let index = self.bins.placeOnLaunching(demand) else { return false }
        if index >= self.bins.firstNewBin { self.opened[index - self.bins.firstNewBin].demands.append(demand) }
        return true
    }

    /// Counts `demand` as unmet in `table`, under the reason the first of its shape got.
    static func note(_ demand: ResourceDemand, _ reason: String, in table: inout [String: UnmetDemand]) {
        let key = NodePlanner.key(demand)
        if table[key] == nil {
            table[key] = UnmetDemand(resources: demand.resources, group: demand.group, count: 0, reason: reason)
        }
        table[key]!.count += 1
    }
}

/// The packing's working state: free room on the nodes there are, on launches in flight and on
/// new nodes opened this pass. Fits are `Placement.choose`'s (the controller's own rule, GPU
/// device by device and `max_replicas_per_node` included), so a demand packed here is one the
/// controller will place there.
struct Bins {
    private var existing: [NodeView]
    private var groupsByNode: [String: [String: Int]]
    /// Demand shapes that fitted no existing node: room there only shrinks within a pass, so
    /// they never will this pass (thousands of one deployment's replicas are checked once).
    private var failedOnExisting: Set<String> = []

    /// Launching bins in classes of identical state (room, GPU grants, replicas per
    /// deployment): the in-flight nodes of one type are one class, so packing a demand looks at
    /// the distinct states there are, not at every launching node.
    private struct BinClass {
        var view: NodeView
        var groups: [String: Int]
        var members: [Int]
    }

    private struct ClassKey: Hashable {
        var total: ResourceSet
        var available: ResourceSet
        var gpus: GPUAllocator?
        var replicaCount: Int
        var groups: [String: Int]
    }

    private var classes: [BinClass] = []
    private var classByKey: [ClassKey: Int] = [:]
    private var binCount = 0
    /// Launching bins at and after this index were opened this pass.
    private(set) var firstNewBin = 0
    private var sequence = 0

    init(observed: [ObservedNode], inFlight: [ManagedNode], config: ClusterConfig) {
        self.existing = observed.map(\.view).filter { $0.state == .alive }
        self.groupsByNode = Dictionary(observed.map { ($0.id, $0.replicasByGroup) }, uniquingKeysWith: { first, _ in first })
        for node in inFlight.sorted(by: { $0.id < $1.id }) {
            guard let type = config.nodeType(named: node.nodeType) else { continue }
            self.addBin(Self.emptyView(type, id: ""), groups: [:])
        }
        self.firstNewBin = self.binCount
    }

    static func emptyView(_ type: NodeTypeConfig, id: String) -> NodeView {
        let gpus = Int(type.resources[ResourceSet.gpu].integerPart)
        return NodeView(
            id: id, total: type.resources,
            gpus: gpus > 0 ? GPUAllocator(gpuIDs: (0..<gpus).map(String.init)) : nil
        )
    }

    /// Opens a new bin of `type` (a node this pass launches).
    mutating func open(_ type: NodeTypeConfig) {
        self.addBin(Self.emptyView(type, id: ""), groups: [:])
    }

    private mutating func addBin(_ view: NodeView, groups: [String: Int]) {
        self.binCount += 1
        self.place(bin: self.binCount - 1, view: view, groups: groups)
    }

    /// Puts a bin into the class of its state.
    private mutating func place(bin: Int, view: NodeView, groups: [String: Int]) {
        let key = ClassKey(total: view.total, available: view.available, gpus: view.gpus, replicaCount: view.replicaCount, groups: groups)
        if let index = self.classByKey[key] {
            self.classes[index].members.append(bin)
            return
        }
        var representative = view
        // Ids in class order, so that ties in placement go to the older class.
        representative.id = "class-" + String(repeating: "0", count: max(0, 9 - String(self.classes.count).count)) + String(self.classes.count)
        self.classByKey[key] = self.classes.count
        self.classes.append(BinClass(view: representative, groups: groups, members: [bin]))
    }

    /// Packs onto a node there is; returns its id.
    mutating func placeOnExisting(_ demand: ResourceDemand) -> String? {
        let key = NodePlanner.key(demand)
        guard !self.failedOnExisting.contains(key) else { return nil }
        guard case .node(let id) = self.choose(demand, in: self.existing, groups: { self.groupsByNode[$0] }) else {
            self.failedOnExisting.insert(key)
            return nil
        }
        let index = self.existing.firstIndex { $0.id == id }!
        let (view, groups) = self.reserve(demand, on: self.existing[index], groups: self.groupsByNode[id] ?? [:])
        self.existing[index] = view
        self.groupsByNode[id] = groups
        return id
    }

    /// Packs onto a launching node; returns its bin index.
    mutating func placeOnLaunching(_ demand: ResourceDemand) -> Int? {
        let live = self.classes.indices.filter { !self.classes[$0].members.isEmpty }
        var groupsByClass: [String: [String: Int]] = [:]
        for index in live { groupsByClass[self.classes[index].view.id] = self.classes[index].groups }
        let views = live.map { self.classes[$0].view }
        guard case .node(let id) = self.choose(demand, in: views, groups: { groupsByClass[$0] }) else { return nil }
        let index = live.first { self.classes[$0].view.id == id }!
        let bin = self.classes[index].members.removeLast()
        let (view, groups) = self.reserve(demand, on: self.classes[index].view, groups: self.classes[index].groups)
        self.place(bin: bin, view: view, groups: groups)
        return bin
    }

    private func choose(_ demand: ResourceDemand, in views: [NodeView], groups: (String) -> [String: Int]?) -> PlacementDecision {
        var perNode: [String: Int] = [:]
        if demand.maxPerNode != nil {
            for view in views { perNode[view.id] = groups(view.id)?[demand.group] ?? 0 }
        }
        return Placement.choose(
            demand: demand.resources, nodes: views, deploymentReplicasPerNode: perNode, maxReplicasPerNode: demand.maxPerNode)
    }

    private mutating func reserve(_ demand: ResourceDemand, on node: NodeView, groups before: [String: Int]) -> (NodeView, [String: Int]) {
        var view = node
        view.available = view.available.subtracting(demand.resources)
        view.replicaCount += 1
        let gpu = demand.resources[ResourceSet.gpu]
        if gpu > .zero, view.gpus != nil {
            self.sequence += 1
            _ = view.gpus!.allocate(replicaID: "demand#\(self.sequence)", amount: gpu)
        }
        var groups = before
        groups[demand.group, default: 0] += 1
        return (view, groups)
    }
}

// MARK: - What `GET /api/cluster/nodes` and `serve status` show

extension NodePlanner {
    /// The autoscaler's view: config and counts per type, launches in flight, idle timers,
    /// demands waiting and infeasible. Times are seconds, relative to `now`.
    public func statusJSON(now: Double) -> JSONValue {
        func resources(_ set: ResourceSet) -> JSONValue {
            .object(set.quantities.mapValues { .number($0.doubleValue) })
        }
        func number(_ value: Double) -> JSONValue {
            .number((value * 10).rounded() / 10)
        }
        let types: [JSONValue] = self.config.nodeTypes.map { type in
            let mine = self.nodes.values.filter { $0.nodeType == type.name }
            return .object([
                "name": .string(type.name),
                "resources": resources(type.resources),
                "min_workers": .number(Double(type.minWorkers)),
                "max_workers": .number(Double(type.maxWorkers)),
                "nodes": .number(Double(mine.filter { $0.state == .joined }.count)),
                "launching": .number(Double(mine.filter { $0.state == .requested || $0.state == .booting }.count)),
                "draining": .number(Double(mine.filter { $0.state == .draining }.count)),
                "retry_in_s": self.backoffRemaining(type.name, now: now).map(number) ?? .null,
            ])
        }
        let sorted = self.nodes.values.sorted { ($0.launchedAt, $0.id) < ($1.launchedAt, $1.id) }
        let launching: [JSONValue] = sorted.filter { $0.state == .requested || $0.state == .booting }.map { node in
            .object([
                "node_id": .string(node.id),
                "node_type": .string(node.nodeType),
                "state": .string(node.state.rawValue),
                "request_id": .string(node.requestID),
                "age_s": number(now - node.launchedAt),
                "timeout_in_s": number(max(0, node.launchedAt + self.config.launchTimeoutS - now)),
                "reason": .string(node.reason),
            ])
        }
        let managed: [JSONValue] = sorted.map { node in
            var fields: [String: JSONValue] = [
                "node_id": .string(node.id),
                "node_type": .string(node.nodeType),
                "state": .string(node.state.rawValue),
                "reason": .string(node.reason),
            ]
            let annotations = self.nodeAnnotations(node.id, now: now) ?? [:]
            fields["idle_s"] = annotations["idle_s"] ?? .null
            fields["idle_terminate_in_s"] = annotations["idle_terminate_in_s"] ?? .null
            return .object(fields)
        }
        func demands(_ list: [UnmetDemand]) -> JSONValue {
            .array(list.map { demand in
                .object([
                    "deployment": .string(demand.group),
                    "resources": resources(demand.resources),
                    "count": .number(Double(demand.count)),
                    "reason": .string(demand.reason),
                ])
            })
        }
        return .object([
            "node_types": .array(types),
            "max_workers": self.config.maxWorkers.map { .number(Double($0)) } ?? .null,
            "idle_timeout_s": .number(self.config.idleTimeoutS),
            "upscaling_speed": .number(self.config.upscalingSpeed),
            "max_concurrent_launches": .number(Double(self.config.maxConcurrentLaunches)),
            "launch_timeout_s": .number(self.config.launchTimeoutS),
            "launches_in_flight": .array(launching),
            "managed_nodes": .array(managed),
            "pending_demands": demands(self.waiting),
            "infeasible_demands": demands(self.infeasible),
        ])
    }

    /// Keys added to a node's entry in `GET /api/cluster/nodes` when the autoscaler launched it:
    /// its lifecycle state, how long it has hosted nothing, and when it will be given back.
    public func nodeAnnotations(_ nodeID: String, now: Double) -> [String: JSONValue]? {
        guard let node = self.nodes[nodeID] else { return nil }
        var annotations: [String: JSONValue] = [
            "launch_state": .string(node.state.rawValue),
            "idle_s": .null,
            "idle_terminate_in_s": .null,
        ]
        if let since = node.idleSince {
            annotations["idle_s"] = .number(((now - since) * 10).rounded() / 10)
            let minimum = self.config.nodeType(named: node.nodeType)?.minWorkers ?? 0
            let sameType = self.nodes.values.filter { $0.nodeType == node.nodeType && $0.state != .draining }.count
            if sameType > minimum {
                annotations["idle_terminate_in_s"] = .number((max(0, since + self.config.idleTimeoutS - now) * 10).rounded() / 10)
            }
        }
        return annotations
    }
}
