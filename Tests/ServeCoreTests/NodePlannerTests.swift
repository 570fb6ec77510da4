import Testing

@testable import ServeCore

/// The node planner fed events with a fake clock (plain `Double` seconds): no provider, no
/// sleeping.
@Suite("Node planner")
struct NodePlannerTests {
    static let cpu2 = NodeTypeConfig(name: "cpu2", resources: ["CPU": 2], maxWorkers: 3)
    static let gpu = NodeTypeConfig(name: "gpu", resources: ["CPU": 8, "GPU": 1, "accelerator_type:A100": 1], maxWorkers: 2)

    static func config(_ types: [NodeTypeConfig] = [cpu2], maxWorkers: Int? = nil, idle: Double = 60, launchTimeout: Double = 30, concurrent: Int = 10) -> ClusterConfig {
        ClusterConfig(nodeTypes: types, maxWorkers: maxWorkers, idleTimeoutS: idle, maxConcurrentLaunches: concurrent, launchTimeoutS: launchTimeout)
    }

    static func demands(_ count: Int, _ resources: ResourceSet = ["CPU": 1], group: String = "app/D", maxPerNode: Int? = nil) -> [ResourceDemand] {
        Array(repeating: ResourceDemand(resources: resources, group: group, maxPerNode: maxPerNode), count: count)
    }

    static func node(_ id: String, type: String, total: ResourceSet, replicas: Int = 0, used: ResourceSet = [:], state: NodeState = .alive, groups: [String: Int] = [:]) -> ObservedNode {
        ObservedNode(
            view: NodeView(id: id, state: state, total: total, available: total.subtracting(used), replicaCount: replicas),
            nodeType: type, replicasByGroup: groups)
    }

    static func launches(_ directives: [NodeDirective]) -> [NodeLaunch] {
        directives.compactMap { if case .launch(let launch) = $0 { launch } else { nil } }
    }

    static func terminations(_ directives: [NodeDirective]) -> [NodeTermination] {
        directives.compactMap { if case .terminate(let termination) = $0 { termination } else { nil } }
    }

    static func reports(_ directives: [NodeDirective]) -> [String] {
        directives.compactMap { if case .report(let text) = $0 { text } else { nil } }
    }

    /// Launches everything asked and has the nodes join with their type's resources and no
    /// replicas; returns the joined nodes.
    static func launchAndJoin(_ planner: inout NodePlanner, _ directives: [NodeDirective], now: Double) -> [ObservedNode] {
        var joined: [ObservedNode] = []
        for launch in launches(directives) {
            planner.launchSucceeded(requestID: launch.requestID, listed: Set(launch.nodeIDs))
            let type = planner.config.nodeType(named: launch.nodeType)!
            joined += launch.nodeIDs.map { node($0, type: type.name, total: type.resources) }
        }
        return joined
    }

    @Test("5 pending 1-CPU replicas and a 2-CPU type (max 3): one launch of 3 nodes, then nothing more while they boot")
    func binPacksPendingReplicas() throws {
        var planner = NodePlanner(config: Self.config(), idPrefix: "t")
        let first = planner.tick(now: 0, observed: [], demands: Self.demands(5), providerNodes: [])
        let launches = Self.launches(first)
        #expect(launches.count == 1)
        let launch = try #require(launches.first)
        #expect(launch.nodeType == "cpu2")
        #expect(launch.nodeIDs == ["cpu2-t-1", "cpu2-t-2", "cpu2-t-3"])
        #expect(launch.reason == "for 5 pending replica(s): 5 × app/D (CPU: 1)")
        #expect(planner.nodes.values.allSatisfy { $0.state == .requested })

        planner.launchSucceeded(requestID: launch.requestID, listed: Set(launch.nodeIDs))
        #expect(planner.nodes.values.allSatisfy { $0.state == .booting })
        let again = planner.tick(now: 1, observed: [], demands: Self.demands(5), providerNodes: launch.nodeIDs.map { ProviderNodeRecord(nodeID: $0, nodeType: "cpu2") })
        #expect(Self.launches(again).isEmpty)
        #expect(planner.waiting.isEmpty)
    }

    @Test("a demand that already fits a node there is launches nothing; max_replicas_per_node counts")
    func existingRoom() {
        var planner = NodePlanner(config: Self.config(), idPrefix: "t")
        let worker = Self.node("w", type: "cpu2", total: ["CPU": 2], replicas: 1, used: ["CPU": 1], groups: ["app/D": 1])
        #expect(Self.launches(planner.tick(now: 0, observed: [worker], demands: Self.demands(1), providerNodes: [])).isEmpty)
        // The same free CPU, but the deployment allows one replica per node: a new node.
        let directives = planner.tick(now: 1, observed: [worker], demands: Self.demands(1, maxPerNode: 1), providerNodes: [])
        #expect(Self.launches(directives).map(\.nodeIDs.count) == [1])
    }

    @Test("GPU demands launch only the GPU type; CPU demands avoid it")
    func gpuTypes() {
        var planner = NodePlanner(config: Self.config([Self.gpu, Self.cpu2]), idPrefix: "t")
        let gpuDirectives = planner.tick(now: 0, observed: [], demands: Self.demands(2, ["CPU": 1, "GPU": 0.5], group: "app/G"), providerNodes: [])
        #expect(Self.launches(gpuDirectives).map(\.nodeType) == ["gpu"])
        #expect(Self.launches(gpuDirectives).map(\.nodeIDs.count) == [1])  // two halves share one GPU

        var cpuPlanner = NodePlanner(config: Self.config([Self.gpu, Self.cpu2]), idPrefix: "t")
        let cpuDirectives = cpuPlanner.tick(now: 0, observed: [], demands: Self.demands(4), providerNodes: [])
        #expect(Self.launches(cpuDirectives).map(\.nodeType) == ["cpu2"])
        #expect(Self.launches(cpuDirectives).map(\.nodeIDs.count) == [2])

        // Past cpu2's max, CPU demands wait rather than take GPU nodes? No: Ray would use the GPU
        // type when nothing else fits, and so does this.
        var overflow = NodePlanner(config: Self.config([Self.gpu, Self.cpu2]), idPrefix: "t")
        let overflowDirectives = overflow.tick(now: 0, observed: [], demands: Self.demands(8), providerNodes: [])
        #expect(Self.launches(overflowDirectives).map(\.nodeType).sorted() == ["cpu2", "gpu"])
    }

    @Test("a demand no node type can hold is reported once, with the reason, and never launched for")
    func infeasible() {
        var planner = NodePlanner(config: Self.config([Self.cpu2, Self.gpu]), idPrefix: "t")
        let demands = Self.demands(2, ["CPU": 1, "GPU": 2], group: "app/Big")
        let first = planner.tick(now: 0, observed: [], demands: demands, providerNodes: [])
        #expect(Self.launches(first).isEmpty)
        #expect(
            Self.reports(first) == [
                "infeasible: 2 pending replica(s) of app/Big need CPU: 1, GPU: 2; no node type can hold it (cpu2 lacks GPU 2; gpu lacks GPU 2)"
            ])
        #expect(planner.infeasible.map(\.count) == [2])
        let second = planner.tick(now: 1, observed: [], demands: demands, providerNodes: [])
        #expect(second.isEmpty)
        #expect(planner.infeasible.count == 1)
        // Gone, then back: reported again.
        _ = planner.tick(now: 2, observed: [], demands: [], providerNodes: [])
        #expect(planner.infeasible.isEmpty)
        #expect(Self.reports(planner.tick(now: 3, observed: [], demands: demands, providerNodes: [])).count == 1)
    }

    @Test("max_workers per type and overall hold; what does not fit waits, with the reason")
    func maxima() {
        var planner = NodePlanner(config: Self.config([Self.cpu2], maxWorkers: 2), idPrefix: "t")
        let directives = planner.tick(now: 0, observed: [], demands: Self.demands(10), providerNodes: [])
        #expect(Self.launches(directives).map(\.nodeIDs.count) == [2])
        #expect(planner.waiting.map(\.count) == [6])
        #expect(planner.waiting.first?.reason == "no node can be launched: the cluster at max_workers 2")

        var perType = NodePlanner(config: Self.config([Self.cpu2]), idPrefix: "t")
        _ = perType.tick(now: 0, observed: [], demands: Self.demands(10), providerNodes: [])
        #expect(perType.nodes.count == 3)
        #expect(perType.waiting.first?.reason == "no node can be launched: cpu2 at max_workers 3")
    }

    @Test("min_workers are launched and kept, and never terminated for idleness")
    func minWorkers() {
        var type = Self.cpu2
        type.minWorkers = 2
        var planner = NodePlanner(config: Self.config([type], idle: 5), idPrefix: "t")
        let first = planner.tick(now: 0, observed: [], demands: [], providerNodes: [])
        #expect(Self.launches(first).map(\.nodeIDs.count) == [2])
        #expect(Self.launches(first).first?.reason == "min_workers 2 for cpu2")
        let joined = Self.launchAndJoin(&planner, first, now: 0)
        _ = planner.tick(now: 1, observed: joined, demands: [], providerNodes: joined.map { ProviderNodeRecord(nodeID: $0.id, nodeType: "cpu2") })
        let later = planner.tick(now: 100, observed: joined, demands: [], providerNodes: joined.map { ProviderNodeRecord(nodeID: $0.id, nodeType: "cpu2") })
        #expect(later.isEmpty)
    }

    @Test("the launch rate: at most max_concurrent_launches in flight, the rest wait for joins")
    func launchRate() {
        var planner = NodePlanner(config: Self.config([NodeTypeConfig(name: "c", resources: ["CPU": 1], maxWorkers: 100)], concurrent: 3), idPrefix: "t")
        let first = planner.tick(now: 0, observed: [], demands: Self.demands(8), providerNodes: [])
        #expect(Self.launches(first).map(\.nodeIDs.count) == [3])
        #expect(planner.waiting.first?.reason == "launch rate limit: at most 3 launch(es) in flight")
        #expect(planner.waiting.first?.count == 5)
        let joined = Self.launchAndJoin(&planner, first, now: 0)
        #expect(Self.launches(planner.tick(now: 0.5, observed: [], demands: Self.demands(8), providerNodes: nil)).isEmpty)
        // Three joined (each now hosting one): three more may launch.
        let busy = joined.map { Self.node($0.id, type: "c", total: ["CPU": 1], replicas: 1, used: ["CPU": 1]) }
        let second = planner.tick(now: 1, observed: busy, demands: Self.demands(5), providerNodes: nil)
        #expect(Self.launches(second).map(\.nodeIDs.count) == [3])
        // upscaling_speed: without the cap, max(5, ceil(speed × nodes)).
        let fast = NodePlanner(config: ClusterConfig(nodeTypes: [], upscalingSpeed: 2, maxConcurrentLaunches: 100), idPrefix: "t")
        #expect(fast.allowedInFlight(running: 0) == 5)
        #expect(fast.allowedInFlight(running: 10) == 20)
    }

    @Test("idle nodes are terminated after idle_timeout_s, never the head or a node someone else started, never early")
    func idleTermination() throws {
        var planner = NodePlanner(config: Self.config(idle: 10), idPrefix: "t")
        let first = planner.tick(now: 0, observed: [], demands: Self.demands(3), providerNodes: [])
        let ids = Self.launches(first).flatMap(\.nodeIDs)
        _ = Self.launchAndJoin(&planner, first, now: 0)
        let head = Self.node("head-1", type: "head", total: ["CPU": 4])
        let byHand = Self.node("manual", type: "cpu2", total: ["CPU": 2])
        func observed(busy: Set<String>, gone: Set<String> = []) -> [ObservedNode] {
            [head, byHand] + ids.filter { !gone.contains($0) }.map { Self.node($0, type: "cpu2", total: ["CPU": 2], replicas: busy.contains($0) ? 1 : 0, used: busy.contains($0) ? ["CPU": 1] : [:]) }
        }
        let listed = ids.map { ProviderNodeRecord(nodeID: $0, nodeType: "cpu2") }
        // Joined at 1 while busy; at 5 the first goes idle.
        #expect(Self.reports(planner.tick(now: 1, observed: observed(busy: Set(ids)), demands: [], providerNodes: listed)).count == 2)
        _ = planner.tick(now: 5, observed: observed(busy: [ids[1]]), demands: [], providerNodes: listed)
        #expect(Self.terminations(planner.tick(now: 14.9, observed: observed(busy: [ids[1]]), demands: [], providerNodes: listed)).isEmpty)
        let idle = Self.terminations(planner.tick(now: 15, observed: observed(busy: [ids[1]]), demands: [], providerNodes: listed))
        #expect(idle.map(\.nodeID) == [ids[0]])
        #expect(idle.first?.reason == "idle for 10 s (idle_timeout_s 10 s)")
        #expect(planner.nodes[ids[0]]?.state == .draining)
        planner.terminateSucceeded(nodeID: ids[0])
        #expect(planner.nodes[ids[0]] == nil)
        // Idle from 41; at 51 a demand packs onto it (the controller will place a replica there),
        // so it stays; without one it goes.
        let rest = Array(listed.dropFirst())
        #expect(Self.terminations(planner.tick(now: 41, observed: observed(busy: [], gone: [ids[0]]), demands: [], providerNodes: rest)).isEmpty)
        #expect(Self.terminations(planner.tick(now: 51, observed: observed(busy: [], gone: [ids[0]]), demands: Self.demands(1), providerNodes: rest)).isEmpty)
        #expect(Self.terminations(planner.tick(now: 52, observed: observed(busy: [], gone: [ids[0]]), demands: [], providerNodes: rest)).map(\.nodeID) == [ids[1]])
    }

    @Test("a terminated node the controller still shows DRAINING does not hold the type at its max")
    func terminatedNodeNotCounted() throws {
        var type = Self.cpu2
        type.maxWorkers = 1
        var planner = NodePlanner(config: Self.config([type], idle: 1), idPrefix: "t")
        let first = planner.tick(now: 0, observed: [], demands: Self.demands(1), providerNodes: [])
        let joined = Self.launchAndJoin(&planner, first, now: 0)
        _ = planner.tick(now: 1, observed: joined, demands: [], providerNodes: nil)
        let termination = try #require(Self.terminations(planner.tick(now: 2, observed: joined, demands: [], providerNodes: nil)).first)
        planner.terminateSucceeded(nodeID: termination.nodeID)
        let draining = [Self.node(termination.nodeID, type: "cpu2", total: ["CPU": 2], state: .draining)]
        let again = planner.tick(now: 3, observed: draining, demands: Self.demands(1), providerNodes: nil)
        #expect(Self.launches(again).map(\.nodeIDs.count) == [1])
    }

    @Test("a drain the controller refuses puts the node back to JOINED with a fresh idle timer")
    func drainRefused() {
        var planner = NodePlanner(config: Self.config(idle: 1), idPrefix: "t")
        let first = planner.tick(now: 0, observed: [], demands: Self.demands(1), providerNodes: [])
        let joined = Self.launchAndJoin(&planner, first, now: 0)
        _ = planner.tick(now: 1, observed: joined, demands: [], providerNodes: nil)
        let termination = Self.terminations(planner.tick(now: 2, observed: joined, demands: [], providerNodes: nil))
        #expect(termination.count == 1)
        planner.drainRefused(nodeID: joined[0].id)
        #expect(planner.nodes[joined[0].id]?.state == .joined)
        #expect(planner.nodes[joined[0].id]?.idleSince == nil)
    }

    @Test("a launch that never joins is terminated at launch_timeout_s and retried after a backoff")
    func neverJoins() throws {
        var planner = NodePlanner(config: Self.config(launchTimeout: 10), idPrefix: "t")
        let first = planner.tick(now: 0, observed: [], demands: Self.demands(1), providerNodes: [])
        let launch = try #require(Self.launches(first).first)
        planner.launchSucceeded(requestID: launch.requestID, listed: [])
        #expect(Self.launches(planner.tick(now: 9, observed: [], demands: Self.demands(1), providerNodes: [])).isEmpty)
        let timeout = planner.tick(now: 10, observed: [], demands: Self.demands(1), providerNodes: [])
        let termination = try #require(Self.terminations(timeout).first)
        #expect(termination.nodeID == launch.nodeIDs[0])
        #expect(termination.reason == "did not join within launch_timeout_s 10 s; a replacement follows in 1 s")
        // While its termination is in flight and during the backoff, nothing new.
        #expect(Self.launches(timeout).isEmpty)
        planner.terminateSucceeded(nodeID: termination.nodeID)
        let waiting = planner.tick(now: 10.5, observed: [], demands: Self.demands(1), providerNodes: [])
        #expect(Self.launches(waiting).isEmpty)
        #expect(planner.waiting.first?.reason == "no node can be launched: cpu2: a launch failed, retrying in 0.5 s")
        let retry = planner.tick(now: 11, observed: [], demands: Self.demands(1), providerNodes: [])
        #expect(Self.launches(retry).map(\.nodeIDs.count) == [1])
        #expect(Self.launches(retry).first?.nodeIDs != launch.nodeIDs)
    }

    @Test("a launched node that exits before joining is replaced; the backoff doubles and resets on a join")
    func diesBeforeJoining() throws {
        var planner = NodePlanner(config: Self.config(), idPrefix: "t")
        var now = 0.0
        var delays: [String] = []
        for _ in 0..<3 {
            let launch = try #require(Self.launches(planner.tick(now: now, observed: [], demands: Self.demands(1), providerNodes: [])).first)
            planner.launchSucceeded(requestID: launch.requestID, listed: Set(launch.nodeIDs))
            let gone = planner.tick(now: now + 0.1, observed: [], demands: Self.demands(1), providerNodes: [])
            delays += Self.reports(gone)
            #expect(planner.nodes.isEmpty)
            now += 10
        }
        #expect(
            delays == [
                "node cpu2-t-1 (cpu2) exited before joining; launching a replacement in 1 s",
                "node cpu2-t-3 (cpu2) exited before joining; launching a replacement in 2 s",
                "node cpu2-t-5 (cpu2) exited before joining; launching a replacement in 4 s",
            ])
        let launch = try #require(Self.launches(planner.tick(now: now, observed: [], demands: Self.demands(1), providerNodes: [])).first)
        let joined = Self.launchAndJoin(&planner, [.launch(launch)], now: now)
        #expect(Self.reports(planner.tick(now: now + 1, observed: joined, demands: [], providerNodes: nil)) == ["node cpu2-t-7 (cpu2) joined 1 s after its launch"])
        #expect(planner.backoffRemaining("cpu2", now: now + 1) == nil)
    }

    @Test("a failed launch call drops its nodes and backs off; a joined node that leaves is terminated")
    func failures() throws {
        var planner = NodePlanner(config: Self.config(), idPrefix: "t")
        let launch = try #require(Self.launches(planner.tick(now: 0, observed: [], demands: Self.demands(3), providerNodes: [])).first)
        #expect(planner.launchFailed(requestID: launch.requestID, error: "quota exceeded", now: 0) == "launch of 2 × cpu2 failed (retrying in 1 s): quota exceeded")
        #expect(planner.nodes.isEmpty)
        let next = try #require(Self.launches(planner.tick(now: 1, observed: [], demands: Self.demands(3), providerNodes: [])).first)
        let joined = Self.launchAndJoin(&planner, [.launch(next)], now: 1)
        _ = planner.tick(now: 2, observed: joined, demands: [], providerNodes: nil)
        let dead = joined.map { Self.node($0.id, type: "cpu2", total: ["CPU": 2], state: .dead) }
        let left = Self.terminations(planner.tick(now: 3, observed: dead, demands: [], providerNodes: nil))
        #expect(left.map(\.reason) == ["it left the cluster", "it left the cluster"])
        // A failed termination is asked again, after a pause.
        planner.terminateFailed(nodeID: left[0].nodeID, now: 3)
        #expect(Self.terminations(planner.tick(now: 4, observed: dead, demands: [], providerNodes: nil)).isEmpty)
        #expect(Self.terminations(planner.tick(now: 8, observed: dead, demands: [], providerNodes: nil)).map(\.nodeID) == [left[0].nodeID])
    }

    @Test("nodes the provider lists but this head does not know are adopted")
    func adoption() {
        var planner = NodePlanner(config: Self.config(), idPrefix: "t")
        let directives = planner.tick(now: 0, observed: [], demands: [], providerNodes: [ProviderNodeRecord(nodeID: "old-1", nodeType: "cpu2"), ProviderNodeRecord(nodeID: "x", nodeType: "unknown")])
        #expect(Self.reports(directives) == ["adopted node old-1 (cpu2) that the provider lists"])
        #expect(planner.nodes["old-1"]?.state == .booting)
        #expect(planner.nodes["x"] == nil)
    }

    @Test("the status shows types, launches in flight, idle timers and unmet demands")
    func status() throws {
        var planner = NodePlanner(config: Self.config([Self.cpu2, Self.gpu], idle: 10), idPrefix: "t")
        let first = planner.tick(now: 0, observed: [], demands: Self.demands(1) + Self.demands(1, ["GPU": 4], group: "app/X"), providerNodes: [])
        let status = planner.statusJSON(now: 2)
        #expect(status["launches_in_flight"]?.arrayValue?.count == 1)
        #expect(status["launches_in_flight"]?[0]?["age_s"]?.doubleValue == 2)
        #expect(status["infeasible_demands"]?[0]?["deployment"]?.stringValue == "app/X")
        #expect(status["node_types"]?[0]?["launching"]?.doubleValue == 1)
        let joined = Self.launchAndJoin(&planner, first, now: 0)
        _ = planner.tick(now: 3, observed: joined, demands: [], providerNodes: nil)
        let annotations = try #require(planner.nodeAnnotations(joined[0].id, now: 7))
        #expect(annotations["launch_state"] == .string("JOINED"))
        #expect(annotations["idle_s"] == .number(4))
        #expect(annotations["idle_terminate_in_s"] == .number(6))
    }
}

extension JSONValue {
    fileprivate subscript(index: Int) -> JSONValue? {
        guard let array = self.arrayValue, array.indices.contains(index) else { return nil }
        return array[index]
    }
}

@Suite("Managed node lifecycle")
struct ManagedNodeLifecycleTests {
    @Test("the legal transitions: forward only, any state may end, a refused drain goes back to JOINED")
    func legalTransitions() {
        #expect(ManagedNodeState.requested.legalNext == [.booting, .terminated])
        #expect(ManagedNodeState.booting.legalNext == [.joined, .draining, .terminated])
        #expect(ManagedNodeState.joined.legalNext == [.draining, .terminated])
        #expect(ManagedNodeState.draining.legalNext == [.joined, .terminated])
        #expect(ManagedNodeState.terminated.legalNext.isEmpty)
        for state in ManagedNodeState.allCases {
            #expect(!state.legalNext.contains(state), "\(state) does not move to itself")
        }
    }
}
