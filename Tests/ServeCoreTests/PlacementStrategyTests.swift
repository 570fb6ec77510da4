import Testing

@testable import ServeCore

@Suite("Placement strategy and max_replicas_per_node")
struct PlacementStrategyTests {
    let hello = DeploymentID(app: "hello", name: "Hello")

    func cluster(
        nodes count: Int,
        cpus: ResourceQuantity = 8,
        replicas: Int,
        strategy: PlacementStrategy = .pack,
        maxReplicasPerNode: Int? = nil
    ) -> ClusterSimulator {
        var cluster = ClusterSimulator(nodes: (1...count).map { ("n-\($0)", ["CPU": cpus]) })
        cluster.targets = [
            DeploymentTarget(
                id: self.hello, replicas: replicas, specVersion: "v1", demand: ["CPU": 1],
                strategy: strategy, maxReplicasPerNode: maxReplicasPerNode
            )
        ]
        return cluster
    }

    func nodesUsed(_ actions: [ReconcileAction]) -> [String] {
        actions.compactMap {
            if case .start(_, _, let nodeID) = $0 { nodeID } else { nil }
        }
    }

    @Test("SPREAD puts 4 replicas on 4 nodes where PACK puts them on one")
    func spreadVersusPack() {
        var spread = self.cluster(nodes: 4, replicas: 4, strategy: .spread)
        #expect(self.nodesUsed(spread.plan()) == ["n-1", "n-2", "n-3", "n-4"])
        var pack = self.cluster(nodes: 4, replicas: 4)
        #expect(self.nodesUsed(pack.plan()) == ["n-1", "n-1", "n-1", "n-1"])

        // Scaling a spread deployment up keeps it even: 4 → 8 adds one per node.
        spread.converge()
        spread.targets[0].replicas = 8
        #expect(Set(self.nodesUsed(spread.plan())) == ["n-1", "n-2", "n-3", "n-4"])
    }

    @Test("SPREAD: fewest replicas of this deployment, then most free CPU, then id")
    func spreadOrder() {
        let nodes = [
            NodeView(id: "a", total: ["CPU": 8], available: ["CPU": 2], replicaCount: 6),
            NodeView(id: "b", total: ["CPU": 8], available: ["CPU": 5], replicaCount: 3),
            NodeView(id: "c", total: ["CPU": 8], available: ["CPU": 7], replicaCount: 1),
            NodeView(id: "d", total: ["CPU": 8], available: ["CPU": 7], replicaCount: 1),
            NodeView(id: "e", total: ["CPU": 8], available: ["CPU": 0.5]),
        ]
        func spread(_ mine: [String: Int]) -> PlacementDecision {
            Placement.choose(demand: ["CPU": 1], nodes: nodes, strategy: .spread, deploymentReplicasPerNode: mine)
        }
        // Other deployments' replicas do not matter, only this one's.
        #expect(spread(["c": 1, "d": 1]) == .node("b"))
        #expect(spread(["b": 1, "c": 1, "d": 1]) == .node("a"))
        #expect(spread([:]) == .node("c"))
        #expect(spread(["c": 2]) == .node("d"))
        // "e" has none of this deployment's replicas, but no room.
        #expect(spread(["a": 1, "b": 1, "c": 1, "d": 1]) == .node("c"))
    }

    @Test("max_replicas_per_node 1 with 2 nodes and 3 replicas leaves one PENDING, saying why")
    func limitLeavesOnePending() {
        var cluster = self.cluster(nodes: 2, replicas: 3, maxReplicasPerNode: 1)
        let reason = "max_replicas_per_node 1 reached on every node that fits"
        let first = cluster.plan()
        #expect(
            first == [
                .start(replicaID: "Hello#0001", deployment: self.hello, nodeID: "n-1"),
                .start(replicaID: "Hello#0002", deployment: self.hello, nodeID: "n-2"),
                .pend(replicaID: "Hello#0003", deployment: self.hello, reason: reason),
            ]
        )
        cluster.apply(first)
        cluster.settle()
        cluster.converge()
        #expect(cluster.running(self.hello).count == 2)
        #expect(cluster.live(self.hello).filter { $0.state == .pending }.map(\.message) == [reason])

        // A third node takes it.
        cluster.addNode("n-3", ["CPU": 8])
        #expect(cluster.plan() == [.place(replicaID: "Hello#0003", nodeID: "n-3")])
    }

    @Test("the limit applies under SPREAD too, and a node without room is not 'at the limit'")
    func limitWithSpreadAndNoRoom() {
        var cluster = self.cluster(nodes: 3, replicas: 5, strategy: .spread, maxReplicasPerNode: 2)
        cluster.nodes[2].total = ["CPU": 0.5]
        cluster.converge()
        #expect(cluster.count(on: "n-1") == 2)
        #expect(cluster.count(on: "n-2") == 2)
        #expect(cluster.count(on: "n-3") == 0)
        #expect(
            cluster.live(self.hello).filter { $0.state == .pending }.map(\.message)
                == ["max_replicas_per_node 2 reached on every node that fits"]
        )
        // When nothing fits at all, the resource reason is given, not the limit.
        let nodes = [NodeView(id: "n-1", total: ["CPU": 1], available: ["CPU": 0.5])]
        #expect(
            Placement.choose(demand: ["CPU": 1], nodes: nodes, deploymentReplicasPerNode: ["n-1": 1], maxReplicasPerNode: 1)
                == .pending(reason: "needs CPU 1; no node has it free (largest free: CPU 0.5 on n-1)")
        )
    }

    @Test("PACK with a limit fills each node to the limit, in packing order")
    func packWithLimit() {
        var cluster = self.cluster(nodes: 3, replicas: 5, maxReplicasPerNode: 2)
        #expect(self.nodesUsed(cluster.plan()) == ["n-1", "n-1", "n-2", "n-2", "n-3"])
    }

    @Test("STOPPING replicas still count toward the limit until they are gone")
    func stoppingCountsTowardLimit() {
        var cluster = self.cluster(nodes: 1, replicas: 1, maxReplicasPerNode: 1)
        cluster.converge()
        // A new spec: the old replica is stopped ahead of its replacement (nothing else fits),
        // and the replacement waits for it to be gone.
        cluster.targets[0].specVersion = "v2"
        let actions = cluster.plan()
        #expect(
            actions == [
                .pend(
                    replicaID: "Hello#0002", deployment: self.hello,
                    reason: "max_replicas_per_node 1 reached on every node that fits"
                )
            ]
        )
        cluster.apply(actions)
        #expect(cluster.plan() == [.stop(replicaID: "Hello#0001")])
        cluster.apply([.stop(replicaID: "Hello#0001")])
        // Hello#0001 is STOPPING, still on n-1: no place yet.
        #expect(cluster.plan().isEmpty)
        cluster.settle()
        #expect(cluster.plan() == [.place(replicaID: "Hello#0002", nodeID: "n-1")])
    }

    @Test("scale-down drains the least-populated node: 3/1 over two nodes, 4 → 3 stops the lone one")
    func scaleDownDrainsLoneNode() {
        var cluster = ClusterSimulator(nodes: [("n-1", ["CPU": 3]), ("n-2", ["CPU": 3])])
        cluster.targets = [
            DeploymentTarget(id: self.hello, replicas: 4, specVersion: "v1", demand: ["CPU": 1])
        ]
        cluster.converge()
        #expect(cluster.count(on: "n-1") == 3)
        #expect(cluster.count(on: "n-2") == 1)
        let lone = cluster.replicas.first { $0.nodeID == "n-2" }!.id
        cluster.targets[0].replicas = 3
        #expect(cluster.plan() == [.stop(replicaID: lone)])
        cluster.converge()
        #expect(cluster.count(on: "n-2") == 0)
        #expect(cluster.count(on: "n-1") == 3)
    }

    @Test("with several deployments, SPREAD counts only its own replicas")
    func mixedDeployments() {
        let packed = DeploymentID(app: "hello", name: "Packed")
        var cluster = ClusterSimulator(nodes: (1...3).map { ("n-\($0)", ["CPU": 4]) })
        cluster.targets = [
            DeploymentTarget(id: packed, replicas: 3, specVersion: "v1", demand: ["CPU": 1]),
            DeploymentTarget(id: self.hello, replicas: 3, specVersion: "v1", demand: ["CPU": 1], strategy: .spread),
        ]
        let actions = cluster.plan()
        #expect(self.nodesUsed(actions) == ["n-1", "n-1", "n-1", "n-2", "n-3", "n-1"])
    }
}

@Suite("Placement with GPUs tracked device by device")
struct PlacementGPUDeviceTests {
    @Test("a node whose free GPU is split over devices takes no replica that needs it on one")
    func splitGPUs() {
        var gpus = GPUAllocator(gpuIDs: ["0", "1"])
        _ = gpus.allocate(replicaID: "a", amount: 0.6)
        _ = gpus.allocate(replicaID: "b", amount: 0.6)
        let split = NodeView(id: "n-1", total: ["CPU": 8, "GPU": 2], available: ["CPU": 6, "GPU": 0.8], replicaCount: 2, gpus: gpus)
        // Without device tracking the 0.8 total would look like room.
        var untracked = split
        untracked.gpus = nil
        #expect(Placement.choose(demand: ["CPU": 1, "GPU": 0.5], nodes: [untracked]) == .node("n-1"))
        #expect(
            Placement.choose(demand: ["CPU": 1, "GPU": 0.5], nodes: [split])
                == .pending(reason: "needs GPU 0.5 on one GPU; the free GPU is split over devices (most on one GPU: 0.4 on n-1)")
        )
        #expect(Placement.choose(demand: ["CPU": 1, "GPU": 0.4], nodes: [split]) == .node("n-1"))
        // Another node with a whole GPU free wins over the split one.
        let other = NodeView(id: "n-2", total: ["CPU": 8, "GPU": 1], gpus: GPUAllocator(gpuIDs: ["0"]))
        #expect(Placement.choose(demand: ["CPU": 1, "GPU": 0.5], nodes: [split, other]) == .node("n-2"))

        var halves = GPUAllocator(gpuIDs: ["0", "1", "2"])
        for id in ["a", "b", "c"] { _ = halves.allocate(replicaID: id, amount: 0.5) }
        halves.release(replicaID: "b")
        // 0.5 on GPU 0 and GPU 1, GPU 2 free: 2 GPUs free in total, 1 whole.
        let node = NodeView(id: "g", total: ["GPU": 3], available: ["GPU": 2], gpus: halves)
        #expect(
            Placement.choose(demand: ["GPU": 2], nodes: [node])
                == .pending(reason: "needs GPU 2 as whole free GPUs; the free GPU is split over devices (most whole GPUs free: 1 on g)")
        )
        #expect(Placement.choose(demand: ["GPU": 1], nodes: [node]) == .node("g"))
    }

    @Test("the reconciler grants GPUs within a pass: two 0.6 replicas need two GPUs")
    func reconcilerTracksGrants() {
        let id = DeploymentID(app: "a", name: "M")
        let target = DeploymentTarget(id: id, replicas: 3, specVersion: "v1", demand: ["CPU": 1, "GPU": 0.6])
        let nodes = [NodeView(id: "n-1", total: ["CPU": 8, "GPU": 2], gpus: GPUAllocator(gpuIDs: ["0", "1"]))]
        var number = 0
        for engine in [Reconciler.Engine.indexed, .linear] {
            number = 0
            let actions = Reconciler.plan(targets: [target], replicas: [], nodes: nodes, engine: engine) { _ in
                number += 1
                return "M#\(number)"
            }
            #expect(
                actions == [
                    .start(replicaID: "M#1", deployment: id, nodeID: "n-1"),
                    .start(replicaID: "M#2", deployment: id, nodeID: "n-1"),
                    // 0.8 GPU is free in total, but as 0.4 on each GPU.
                    .pend(
                        replicaID: "M#3", deployment: id,
                        reason: "needs GPU 0.6 on one GPU; the free GPU is split over devices (most on one GPU: 0.4 on n-1)"
                    ),
                ]
            )
        }
    }
}

@Suite("Config: placement_strategy, max_replicas_per_node, whole GPUs above 1")
struct PlacementConfigTests {
    func deployment(_ fields: String) throws -> DeploymentConfig {
        try parse("applications: [{name: a, deployments: [{name: A, handler: echo\(fields)}]}]").applications[0].ingress
    }

    @Test("defaults: PACK, no limit")
    func defaults() throws {
        let plain = try self.deployment("")
        #expect(plain.placementStrategy == .pack)
        #expect(plain.maxReplicasPerNode == nil)
        #expect(DeploymentConfig(name: "A", handler: "echo").placementStrategy == .pack)
    }

    @Test("placement_strategy in any case, max_replicas_per_node a positive whole number")
    func parsesBoth() throws {
        for (text, strategy) in [("spread", PlacementStrategy.spread), ("SPREAD", .spread), ("Pack", .pack), ("PACK", .pack)] {
            #expect(try self.deployment(", placement_strategy: \(text)").placementStrategy == strategy)
        }
        let limited = try self.deployment(", placement_strategy: SPREAD, max_replicas_per_node: 2")
        #expect(limited.maxReplicasPerNode == 2)
        #expect(limited.placementStrategy == .spread)
        #expect(try self.deployment(", max_replicas_per_node: null").maxReplicasPerNode == nil)
    }

    @Test("bad values are refused with their paths")
    func refused() {
        let path = "applications[0].deployments[0]"
        #expect(
            problems(
                "applications: [{name: a, deployments: [{name: A, handler: echo, placement_strategy: sprad, max_replicas_per_node: 0}]}]"
            ) == [
                #"\#(path).placement_strategy: must be PACK or SPREAD, not "sprad" (did you mean SPREAD?)"#,
                "\(path).max_replicas_per_node: must be at least 1, not 0",
            ]
        )
        #expect(
            problems(
                "applications: [{name: a, deployments: [{name: A, handler: echo, placement_strategy: STRICT_PACK, max_replicas_per_node: 1.5}]}]"
            ) == [
                #"\#(path).placement_strategy: must be PACK or SPREAD, not "STRICT_PACK""#,
                "\(path).max_replicas_per_node: must be a whole number, not 1.5",
            ]
        )
        #expect(
            problems("applications: [{name: a, deployments: [{name: A, handler: echo, placement_strategy: 1}]}]")
                == ["\(path).placement_strategy: must be a string, not a number (1)"]
        )
    }

    @Test("a GPU request above 1 must be whole; fractions below 1 and whole counts are fine")
    func wholeGPUsAboveOne() throws {
        #expect(
            problems("applications: [{name: a, deployments: [{name: A, handler: echo, ray_actor_options: {num_gpus: 1.5}}]}]")
                == [
                    "applications[0].deployments[0].ray_actor_options.num_gpus: a GPU request above 1 must be a whole number (fractions share one GPU), not 1.5"
                ]
        )
        #expect(
            problems("applications: [{name: a, deployments: [{name: A, handler: echo, actor_options: {num_gpus: 2.25}}]}]")
                == [
                    "applications[0].deployments[0].actor_options.num_gpus: a GPU request above 1 must be a whole number (fractions share one GPU), not 2.25"
                ]
        )
        for amount in ["0", "0.25", "0.5", "1", "2", "8"] {
            let options = try self.deployment(", ray_actor_options: {num_gpus: \(amount)}").actorOptions
            #expect(options.numGPUs == Double(amount)!)
        }
    }

    @Test("neither field changes the spec version: placement moves no running replica")
    func specVersionUnchanged() throws {
        let plain = try self.deployment("")
        let placed = try self.deployment(", placement_strategy: spread, max_replicas_per_node: 3")
        #expect(plain.specVersion == placed.specVersion)
        #expect(plain.specVersion == knownEchoSpecVersion)
        #expect(plain != placed)
    }
}
