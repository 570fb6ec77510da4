import Testing

@testable import ServeCore

/// Generated node types and demands, run through the planner pass after pass against a
/// simulated cluster (nodes boot, some die before joining, some launches fail, replicas come and
/// go), with the invariants checked at every pass. Seeded, so a failure repeats.
@Suite("Node planner (generated)")
struct NodePlannerPropertyTests {
    static let seed: UInt64 = 0x0DE5_CA1E

    static func randomTypes(_ random: inout SeededGenerator) -> [NodeTypeConfig] {
        var types: [NodeTypeConfig] = []
        for index in 0..<Int.random(in: 1...3, using: &random) {
            var resources: ResourceSet = ["CPU": ResourceQuantity(integer: [1, 2, 4, 8].randomElement(using: &random)!)]
            if Bool.random(using: &random) && index > 0 {
                resources["GPU"] = ResourceQuantity(integer: Int64.random(in: 1...2, using: &random))
            }
            if Int.random(in: 0..<4, using: &random) == 0 { resources["custom"] = 2 }
            let max = Int.random(in: 0...5, using: &random)
            types.append(NodeTypeConfig(name: "t\(index)", resources: resources, minWorkers: Int.random(in: 0...min(1, max), using: &random), maxWorkers: max))
        }
        return types
    }

    static func randomDemand(_ random: inout SeededGenerator) -> ResourceDemand {
        var resources: ResourceSet = ["CPU": [0.5, 1, 2, 3, 16].randomElement(using: &random)!]
        switch Int.random(in: 0..<6, using: &random) {
        case 0: resources["GPU"] = [0.5, 1, 3].randomElement(using: &random)!
        case 1: resources["custom"] = 1
        default: break
        }
        let group = "app/d\(Int.random(in: 0..<3, using: &random))"
        return ResourceDemand(resources: resources, group: group, maxPerNode: Int.random(in: 0..<4, using: &random) == 0 ? 1 : nil)
    }

    /// The cluster the planner drives: it keeps its own books, independent of the planner's.
    struct Simulation {
        struct Node {
            var type: NodeTypeConfig
            var replicas: [ResourceDemand] = []
            var idleSince: Double?
        }

        var planner: NodePlanner
        var now = 0.0
        var joined: [String: Node] = [:]
        /// Launched, not joined: when each joins.
        var booting: [String: (type: NodeTypeConfig, joinAt: Double)] = [:]
        var pending: [ResourceDemand] = []
        var random: SeededGenerator
        let head = NodeView(id: "head", total: ["CPU": 1])

        var config: ClusterConfig { self.planner.config }

        func view(_ id: String, _ node: Node) -> NodeView {
            let used = node.replicas.reduce(ResourceSet()) { $0.adding($1.resources) }
            let gpus = Int(node.type.resources[ResourceSet.gpu].integerPart)
            var allocator = gpus > 0 ? GPUAllocator(gpuIDs: (0..<gpus).map(String.init)) : nil
            for (index, replica) in node.replicas.enumerated() where replica.resources[ResourceSet.gpu] > .zero {
                _ = allocator?.allocate(replicaID: "\(index)", amount: replica.resources[ResourceSet.gpu])
            }
            return NodeView(id: id, total: node.type.resources, available: node.type.resources.subtracting(used), replicaCount: node.replicas.count, gpus: allocator)
        }

        var observed: [ObservedNode] {
            [ObservedNode(view: self.head, nodeType: "head")]
                + self.joined.sorted { $0.key < $1.key }.map { id, node in
                    ObservedNode(view: self.view(id, node), nodeType: node.type.name, replicasByGroup: Dictionary(node.replicas.map { ($0.group, 1) }, uniquingKeysWith: +))
                }
        }

        /// The controller's part: place what fits, as `Placement.choose` does.
        mutating func placePending() {
            var still: [ResourceDemand] = []
            for demand in self.pending {
                let views = self.joined.sorted { $0.key < $1.key }.map { self.view($0.key, $0.value) }
                var perNode: [String: Int] = [:]
                for (id, node) in self.joined { perNode[id] = node.replicas.filter { $0.group == demand.group }.count }
                if case .node(let id) = Placement.choose(demand: demand.resources, nodes: views, deploymentReplicasPerNode: perNode, maxReplicasPerNode: demand.maxPerNode) {
                    self.joined[id]!.replicas.append(demand)
                    self.joined[id]!.idleSince = nil
                } else {
                    still.append(demand)
                }
            }
            self.pending = still
        }

        mutating func step(addDemands: Bool, removeReplicas: Bool) {
            if addDemands {
                for _ in 0..<Int.random(in: 0...3, using: &self.random) {
                    self.pending.append(NodePlannerPropertyTests.randomDemand(&self.random))
                }
            }
            if removeReplicas {
                for id in self.joined.keys.sorted() where !self.joined[id]!.replicas.isEmpty && Bool.random(using: &self.random) {
                    self.joined[id]!.replicas.removeLast()
                }
            }
            for (id, boot) in self.booting.sorted(by: { $0.key < $1.key }) {
                if boot.joinAt <= self.now {
                    self.booting[id] = nil
                    self.joined[id] = Node(type: boot.type)
                }
            }
            self.placePending()
            for id in self.joined.keys where self.joined[id]!.replicas.isEmpty && self.joined[id]!.idleSince == nil {
                self.joined[id]!.idleSince = self.now
            }

            let inFlightBefore = self.planner.nodes.values.filter { $0.state == .requested || $0.state == .booting }.count
            let allowed = self.planner.allowedInFlight(running: self.joined.count + 1)
            let listed = (self.booting.map { ProviderNodeRecord(nodeID: $0.key, nodeType: $0.value.type.name) }
                + self.joined.map { ProviderNodeRecord(nodeID: $0.key, nodeType: $0.value.type.name) })
            let directives = self.planner.tick(now: self.now, observed: self.observed, demands: self.pending, providerNodes: listed)

            // Never above a type's max_workers or the cluster's.
            var count: [String: Int] = [:]
            for node in self.planner.nodes.values { count[node.nodeType, default: 0] += 1 }
            for type in self.config.nodeTypes {
                #expect(count[type.name, default: 0] <= type.maxWorkers, "type \(type.name) at \(self.now)")
            }
            #expect(count.values.reduce(0, +) <= self.config.maxWorkers ?? Int.max)
            // Launches in flight within the rate (it can only be above it if it was before: nodes
            // that left the cluster lower the rate).
            let inFlight = self.planner.nodes.values.filter { $0.state == .requested || $0.state == .booting }.count
            #expect(inFlight <= max(allowed, inFlightBefore))
            // Infeasible means no type can hold it.
            for demand in self.planner.infeasible {
                let probe = ResourceDemand(resources: demand.resources, group: demand.group)
                #expect(self.config.nodeTypes.allSatisfy { $0.maxWorkers == 0 || !demand.resources.fits(in: $0.resources) } || self.planner.typesThatFit(probe).isEmpty)
            }

            for directive in directives {
                switch directive {
                case .launch(let launch):
                    if Int.random(in: 0..<10, using: &self.random) == 0 {
                        _ = self.planner.launchFailed(requestID: launch.requestID, error: "quota", now: self.now)
                        continue
                    }
                    self.planner.launchSucceeded(requestID: launch.requestID, listed: Set(launch.nodeIDs))
                    let type = self.config.nodeType(named: launch.nodeType)!
                    for id in launch.nodeIDs where Int.random(in: 0..<10, using: &self.random) != 0 {
                        // The others die before joining: the provider stops listing them.
                        self.booting[id] = (type, self.now + Double.random(in: 0.5...3, using: &self.random))
                    }
                case .terminate(let termination):
                    #expect(termination.nodeID != "head")
                    if let node = self.joined[termination.nodeID] {
                        if termination.reason.hasPrefix("idle for") {
                            // Only nodes that hosted nothing for the whole timeout.
                            #expect(node.replicas.isEmpty)
                            #expect(node.idleSince.map { self.now - $0 >= self.config.idleTimeoutS } == true)
                        }
                        guard node.replicas.isEmpty else {
                            self.planner.drainRefused(nodeID: termination.nodeID)
                            continue
                        }
                    }
                    self.joined[termination.nodeID] = nil
                    self.booting[termination.nodeID] = nil
                    self.planner.terminateSucceeded(nodeID: termination.nodeID)
                case .report:
                    break
                }
            }
            // Idle terminations never go below min_workers.
            for type in self.config.nodeTypes {
                let idleTerminated = directives.contains {
                    if case .terminate(let termination) = $0 { termination.nodeType == type.name && termination.reason.hasPrefix("idle") } else { false }
                }
                if idleTerminated {
                    let remaining = self.planner.nodes.values.filter { $0.nodeType == type.name && $0.state != .draining }.count
                    #expect(remaining >= type.minWorkers)
                }
            }
            self.now += Double.random(in: 0.25...2, using: &self.random)
        }
    }

    @Test("random clusters: max per type and overall, launch rate, infeasible, idle only past the timeout, min_workers kept", arguments: 0..<30)
    func invariants(iteration: Int) {
        var random = SeededGenerator(seed: Self.seed &+ UInt64(iteration))
        let types = Self.randomTypes(&random)
        let minimum = types.reduce(0) { $0 + $1.minWorkers }
        let config = ClusterConfig(
            nodeTypes: types,
            maxWorkers: Bool.random(using: &random) ? Int.random(in: minimum...(minimum + 6), using: &random) : nil,
            idleTimeoutS: Double(Int.random(in: 2...10, using: &random)),
            upscalingSpeed: [0.5, 1, 2].randomElement(using: &random)!,
            maxConcurrentLaunches: Int.random(in: 1...10, using: &random),
            launchTimeoutS: 5
        )
        var simulation = Simulation(planner: NodePlanner(config: config, idPrefix: "p"), random: random)
        for _ in 0..<40 { simulation.step(addDemands: true, removeReplicas: false) }
        for _ in 0..<40 { simulation.step(addDemands: false, removeReplicas: true) }
        // Everything gone: after the idle timeout (and any backoff) each type is back at its
        // min_workers, all of them joined.
        simulation.pending = []
        for _ in 0..<200 { simulation.step(addDemands: false, removeReplicas: true) }
        for type in types {
            let joined = simulation.joined.values.filter { $0.type.name == type.name }.count
            #expect(joined == type.minWorkers, "type \(type.name) (min \(type.minWorkers)): \(joined) joined, iteration \(iteration)")
        }
        #expect(simulation.booting.isEmpty)
    }

    @Test("one node type, simple demands: packed within 10% of the lower bound", arguments: 0..<30)
    func packingBound(iteration: Int) {
        var random = SeededGenerator(seed: Self.seed &+ 1000 &+ UInt64(iteration))
        let capacity = [4, 8, 16].randomElement(using: &random)!
        let type = NodeTypeConfig(name: "c", resources: ["CPU": ResourceQuantity(integer: Int64(capacity))], maxWorkers: 10_000)
        let config = ClusterConfig(nodeTypes: [type], upscalingSpeed: 1000, maxConcurrentLaunches: 10_000)
        var planner = NodePlanner(config: config, idPrefix: "b")
        let sizes: [ResourceQuantity] = [0.5, 1, 1.5, 2, 3, ResourceQuantity(integer: Int64(capacity / 2))]
        let demands = (0..<Int.random(in: 20...120, using: &random)).map { _ in
            ResourceDemand(resources: ["CPU": sizes.randomElement(using: &random)!], group: "app/d")
        }
        let directives = planner.tick(now: 0, observed: [], demands: demands, providerNodes: [])
        let launched = directives.reduce(0) { if case .launch(let launch) = $1 { $0 + launch.nodeIDs.count } else { $0 } }
        let total = demands.reduce(ResourceQuantity.zero) { $0 + $1.resources[ResourceSet.cpu] }
        let bound = Int((total.units + Int64(capacity) * ResourceQuantity.scale - 1) / (Int64(capacity) * ResourceQuantity.scale))
        #expect(launched >= bound)
        #expect(Double(launched) <= (Double(bound) * 1.1).rounded(.up), "\(launched) nodes for a bound of \(bound)")
        #expect(planner.waiting.isEmpty && planner.infeasible.isEmpty)
    }

    @Test("equal demands that divide a node fill it exactly", arguments: [(1, 2, 5), (2, 8, 9), (4, 16, 17), (1, 4, 100)])
    func exact(cpus: Int, capacity: Int, count: Int) {
        let type = NodeTypeConfig(name: "c", resources: ["CPU": ResourceQuantity(integer: Int64(capacity))], maxWorkers: 1000)
        var planner = NodePlanner(config: ClusterConfig(nodeTypes: [type], upscalingSpeed: 1000, maxConcurrentLaunches: 1000), idPrefix: "e")
        let demands = Array(repeating: ResourceDemand(resources: ["CPU": ResourceQuantity(integer: Int64(cpus))], group: "a/b"), count: count)
        let directives = planner.tick(now: 0, observed: [], demands: demands, providerNodes: [])
        let launched = directives.reduce(0) { if case .launch(let launch) = $1 { $0 + launch.nodeIDs.count } else { $0 } }
        #expect(launched == (count * cpus + capacity - 1) / capacity)
    }
}
