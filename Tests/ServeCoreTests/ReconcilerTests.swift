import Testing

@testable import ServeCore

@Suite("Reconciler")
struct ReconcilerTests {
    let hello = DeploymentID(app: "hello", name: "Hello")

    func cluster(_ nodes: [(String, ResourceSet)], replicas: Int, demand: ResourceSet = ["CPU": 1]) -> ClusterSimulator {
        var cluster = ClusterSimulator(nodes: nodes)
        cluster.targets = [DeploymentTarget(id: self.hello, replicas: replicas, specVersion: "v1", demand: demand)]
        return cluster
    }

    @Test("a fresh deployment of 3 replicas packs onto the fewest nodes")
    func freshDeploy() {
        var cluster = self.cluster([("n-1", ["CPU": 2]), ("n-2", ["CPU": 2])], replicas: 3)
        #expect(
            cluster.plan() == [
                .start(replicaID: "Hello#0001", deployment: self.hello, nodeID: "n-1"),
                .start(replicaID: "Hello#0002", deployment: self.hello, nodeID: "n-1"),
                .start(replicaID: "Hello#0003", deployment: self.hello, nodeID: "n-2"),
            ]
        )
    }

    @Test("a steady cluster plans nothing")
    func steadyState() {
        var cluster = self.cluster([("n-1", ["CPU": 4])], replicas: 3)
        cluster.converge()
        #expect(cluster.plan().isEmpty)
        #expect(cluster.running(self.hello).count == 3)
    }

    @Test("scale 1 → 4 → 1, emptying a whole node on the way down")
    func scaleUpAndDown() {
        var cluster = self.cluster([("n-1", ["CPU": 2]), ("n-2", ["CPU": 2])], replicas: 1)
        cluster.converge()
        #expect(cluster.running(self.hello).map(\.id) == ["Hello#0001"])

        cluster.targets[0].replicas = 4
        let up = cluster.plan()
        #expect(
            up == [
                .start(replicaID: "Hello#0002", deployment: self.hello, nodeID: "n-1"),
                .start(replicaID: "Hello#0003", deployment: self.hello, nodeID: "n-2"),
                .start(replicaID: "Hello#0004", deployment: self.hello, nodeID: "n-2"),
            ]
        )
        cluster.apply(up)
        cluster.settle()
        #expect(cluster.running(self.hello).count == 4)

        cluster.targets[0].replicas = 1
        #expect(
            cluster.plan() == [
                .stop(replicaID: "Hello#0004"), .stop(replicaID: "Hello#0003"), .stop(replicaID: "Hello#0002"),
            ]
        )
        cluster.converge()
        #expect(cluster.running(self.hello).map(\.id) == ["Hello#0001"])
        #expect(cluster.count(on: "n-2") == 0)
    }

    @Test("deleting an application stops all its replicas, and only its")
    func deleteApp() {
        var cluster = self.cluster([("n-1", ["CPU": 8])], replicas: 2)
        let other = DeploymentID(app: "other", name: "Other")
        cluster.targets.append(DeploymentTarget(id: other, replicas: 1, specVersion: "v1", demand: ["CPU": 1]))
        cluster.converge()
        cluster.targets.removeAll { $0.id == self.hello }
        #expect(cluster.plan() == [.stop(replicaID: "Hello#0001"), .stop(replicaID: "Hello#0002")])
        cluster.converge()
        #expect(cluster.replicas.map(\.id) == ["Other#0003"])
    }

    @Test("a PENDING replica is retried when a node joins, and its reason is sent once")
    func pendingRetried() {
        var cluster = self.cluster([("n-1", ["CPU": 1])], replicas: 2)
        let first = cluster.plan()
        #expect(
            first == [
                .start(replicaID: "Hello#0001", deployment: self.hello, nodeID: "n-1"),
                .pend(replicaID: "Hello#0002", deployment: self.hello, reason: "needs CPU 1; no node has it free"),
            ]
        )
        cluster.apply(first)
        cluster.settle()
        #expect(cluster.plan().isEmpty)  // same reason: nothing to say

        cluster.addNode("n-2", ["CPU": 0.5])
        #expect(
            cluster.plan() == [
                .pend(
                    replicaID: "Hello#0002", deployment: self.hello,
                    reason: "needs CPU 1; no node has it free (largest free: CPU 0.5 on n-2)"
                )
            ]
        )
        cluster.apply(cluster.plan())
        cluster.addNode("n-3", ["CPU": 2])
        #expect(cluster.plan() == [.place(replicaID: "Hello#0002", nodeID: "n-3")])
        cluster.converge()
        #expect(cluster.running(self.hello).count == 2)
    }

    @Test("scaling down stops PENDING replicas first")
    func scaleDownDropsPending() {
        var cluster = self.cluster([("n-1", ["CPU": 2])], replicas: 4)
        cluster.converge()
        #expect(cluster.live(self.hello).filter { $0.state == .pending }.count == 2)
        cluster.targets[0].replicas = 2
        #expect(cluster.plan() == [.stop(replicaID: "Hello#0004"), .stop(replicaID: "Hello#0003")])
    }

    @Test("several deployments in one pass pack against each other")
    func passSharesNodes() {
        var cluster = ClusterSimulator(nodes: [("n-1", ["CPU": 2, "GPU": 1]), ("n-2", ["CPU": 2, "GPU": 1])])
        let a = DeploymentID(app: "a", name: "A")
        let b = DeploymentID(app: "b", name: "B")
        cluster.targets = [
            DeploymentTarget(id: a, replicas: 2, specVersion: "v1", demand: ["CPU": 0.5, "GPU": 0.5]),
            DeploymentTarget(id: b, replicas: 3, specVersion: "v1", demand: ["CPU": 0.5, "GPU": 0.5]),
        ]
        let actions = cluster.plan()
        #expect(
            actions == [
                .start(replicaID: "A#0001", deployment: a, nodeID: "n-1"),
                .start(replicaID: "A#0002", deployment: a, nodeID: "n-1"),
                .start(replicaID: "B#0003", deployment: b, nodeID: "n-2"),
                .start(replicaID: "B#0004", deployment: b, nodeID: "n-2"),
                .pend(
                    replicaID: "B#0005", deployment: b,
                    reason: "needs GPU 0.5; no node has it free"
                ),
            ]
        )
    }

    @Test("a rolling update of 10 replicas replaces at most 2 at a time, starting new ones first")
    func rollingUpdate() {
        var cluster = self.cluster([("n-1", ["CPU": 16]), ("n-2", ["CPU": 16])], replicas: 10)
        cluster.converge()
        #expect(cluster.running(self.hello, version: "v1").count == 10)

        cluster.targets[0].specVersion = "v2"
        var passes = 0
        var oldStopped = 0
        while passes < 30 {
            passes += 1
            let actions = cluster.plan()
            if actions.isEmpty { break }
            let newRunningBefore = cluster.running(self.hello, version: "v2").count
            let stops = actions.filter { if case .stop = $0 { true } else { false } }
            oldStopped += stops.count
            // Never more old replicas stopped than new ones running; never more than 2 at once.
            #expect(oldStopped <= newRunningBefore)
            #expect(stops.count <= 2)
            cluster.apply(actions)
            // Serving capacity never drops below the target, and at most 2 are in flight.
            #expect(cluster.running(self.hello).filter { $0.state == .running }.count >= 10)
            let inFlight = cluster.live(self.hello).filter { $0.specVersion == "v2" && $0.state != .running }
            #expect(inFlight.count <= 2)
            cluster.settle()
        }
        #expect(cluster.running(self.hello, version: "v2").count == 10)
        #expect(cluster.live(self.hello).count == 10)
        #expect(oldStopped == 10)
        #expect(passes == 7)
    }

    @Test("a rolling update in a full cluster makes room without dropping below target - batch")
    func rollingUpdateWhenFull() {
        var cluster = self.cluster([("n-1", ["CPU": 10])], replicas: 10)
        cluster.converge()
        cluster.targets[0].specVersion = "v2"
        var passes = 0
        while passes < 60 {
            passes += 1
            let actions = cluster.plan()
            if actions.isEmpty { break }
            cluster.apply(actions)
            #expect(cluster.running(self.hello).count >= 8)
            cluster.settle()
        }
        #expect(passes < 60)
        #expect(cluster.running(self.hello, version: "v2").count == 10)
        #expect(cluster.live(self.hello).count == 10)
    }

    @Test("a spec change with a smaller target stops the surplus old replicas at once")
    func updateAndScaleDown() {
        var cluster = self.cluster([("n-1", ["CPU": 16])], replicas: 6)
        cluster.converge()
        cluster.targets[0].specVersion = "v2"
        cluster.targets[0].replicas = 2
        let actions = cluster.plan()
        #expect(actions.filter { if case .stop = $0 { true } else { false } }.count == 4)
        #expect(actions.filter { if case .start = $0 { true } else { false } }.count == 1)
        cluster.converge()
        #expect(cluster.running(self.hello, version: "v2").count == 2)
        #expect(cluster.live(self.hello).count == 2)
    }

    @Test("replicas on a DEAD node are replaced, not stopped")
    func deadNode() {
        var cluster = self.cluster([("n-1", ["CPU": 2]), ("n-2", ["CPU": 2])], replicas: 3)
        cluster.converge()
        cluster.killNode("n-1")
        let actions = cluster.plan()
        #expect(
            actions == [
                .start(replicaID: "Hello#0004", deployment: self.hello, nodeID: "n-2"),
                .pend(
                    replicaID: "Hello#0005", deployment: self.hello,
                    reason: "needs CPU 1; no node has it free"
                ),
            ]
        )
    }

    @Test("replicas on a DRAINING node move elsewhere before they stop")
    func drainingNode() {
        var cluster = self.cluster([("n-1", ["CPU": 2]), ("n-2", ["CPU": 2])], replicas: 2)
        cluster.converge()
        #expect(cluster.count(on: "n-1") == 2)
        cluster.setNodeState("n-1", .draining)
        let first = cluster.plan()
        #expect(first == [.start(replicaID: "Hello#0003", deployment: self.hello, nodeID: "n-2")])
        cluster.apply(first)
        cluster.settle()
        cluster.converge()
        #expect(cluster.count(on: "n-1") == 0)
        #expect(cluster.running(self.hello).map(\.nodeID) == ["n-2", "n-2"])
    }

    @Test("zero replicas: nothing to start, everything stopped")
    func zeroReplicas() {
        var cluster = self.cluster([("n-1", ["CPU": 4])], replicas: 2)
        cluster.converge()
        cluster.targets[0].replicas = 0
        cluster.converge()
        #expect(cluster.live(self.hello).isEmpty)
        #expect(cluster.plan().isEmpty)
    }

    @Test("rolling batch: 20% of the target, rounded down, at least one")
    func batchSize() {
        #expect(Reconciler.rollingBatchSize(target: 0) == 1)
        #expect(Reconciler.rollingBatchSize(target: 4) == 1)
        #expect(Reconciler.rollingBatchSize(target: 10) == 2)
        #expect(Reconciler.rollingBatchSize(target: 14) == 2)
        #expect(Reconciler.rollingBatchSize(target: 15) == 3)
    }
}
