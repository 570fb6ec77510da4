import Testing

@testable import ServeCore

@Suite("Placement")
struct PlacementTests {
    /// Places `count` replicas one by one, reserving each on the chosen node, as the
    /// controller does.
    func placeSequentially(_ count: Int, demand: ResourceSet, on nodes: [NodeView]) -> [String] {
        var nodes = nodes
        var chosen: [String] = []
        for _ in 0..<count {
            guard case .node(let id) = Placement.choose(demand: demand, nodes: nodes) else {
                chosen.append("pending")
                continue
            }
            let index = nodes.firstIndex { $0.id == id }!
            nodes[index].available = nodes[index].available.subtracting(demand)
            nodes[index].replicaCount += 1
            chosen.append(id)
        }
        return chosen
    }

    @Test("three 1-CPU replicas on two 2-CPU nodes pack two on one node")
    func packsCPU() {
        let nodes = [NodeView(id: "n-1", total: ["CPU": 2]), NodeView(id: "n-2", total: ["CPU": 2])]
        #expect(self.placeSequentially(3, demand: ["CPU": 1], on: nodes) == ["n-1", "n-1", "n-2"])
    }

    @Test("the most packed node wins, then the one with more replicas, then the id")
    func packingOrder() {
        let nodes = [
            NodeView(id: "a", total: ["CPU": 8], available: ["CPU": 8]),
            NodeView(id: "b", total: ["CPU": 8], available: ["CPU": 3], replicaCount: 5),
            NodeView(id: "c", total: ["CPU": 8], available: ["CPU": 3], replicaCount: 2),
            NodeView(id: "d", total: ["CPU": 8], available: ["CPU": 0.5]),
        ]
        #expect(Placement.choose(demand: ["CPU": 1], nodes: nodes) == .node("b"))
        var tied = nodes
        tied[2].replicaCount = 5
        tied.swapAt(1, 2)
        #expect(Placement.choose(demand: ["CPU": 1], nodes: tied) == .node("b"))
    }

    @Test("two 0.5 GPU replicas share one GPU node")
    func fractionalGPUs() {
        let nodes = [
            NodeView(id: "gpu-1", total: ["CPU": 8, "GPU": 1]),
            NodeView(id: "gpu-2", total: ["CPU": 8, "GPU": 1]),
        ]
        let demand: ResourceSet = ["CPU": 1, "GPU": 0.5]
        #expect(self.placeSequentially(3, demand: demand, on: nodes) == ["gpu-1", "gpu-1", "gpu-2"])
        let tenths: ResourceSet = ["CPU": 0.1, "GPU": 0.1]
        let one = [NodeView(id: "g", total: ["CPU": 1, "GPU": 1])]
        #expect(self.placeSequentially(11, demand: tenths, on: one) == Array(repeating: "g", count: 10) + ["pending"])
    }

    @Test("replicas that need no GPU stay off GPU nodes while others have room")
    func avoidsGPUNodes() {
        let nodes = [
            NodeView(id: "cpu", total: ["CPU": 8]),
            NodeView(id: "gpu", total: ["CPU": 8, "GPU": 1], available: ["CPU": 2, "GPU": 1]),
        ]
        #expect(Placement.choose(demand: ["CPU": 1], nodes: nodes) == .node("cpu"))
        #expect(Placement.choose(demand: ["CPU": 1, "GPU": 1], nodes: nodes) == .node("gpu"))
        #expect(Placement.choose(demand: ["CPU": 1], nodes: [nodes[1]]) == .node("gpu"))
    }

    @Test("accelerator types and custom resources only match nodes that offer them")
    func acceleratorAndCustom() {
        let nodes = [
            NodeView(id: "t4", total: ["CPU": 8, "GPU": 1, "accelerator_type:T4": 1]),
            NodeView(id: "a100", total: ["CPU": 8, "GPU": 1, "accelerator_type:A100": 1, "custom": 2]),
        ]
        let a100: ResourceSet = ["CPU": 1, "GPU": 1, ResourceSet.acceleratorKey("A100"): 1]
        #expect(Placement.choose(demand: a100, nodes: nodes) == .node("a100"))
        #expect(Placement.choose(demand: ["CPU": 1, "custom": 2], nodes: nodes) == .node("a100"))
    }

    @Test("DRAINING and DEAD nodes take nothing new")
    func skipsDrainingAndDead() {
        let nodes = [
            NodeView(id: "n-1", state: .draining, total: ["CPU": 4], available: ["CPU": 1]),
            NodeView(id: "n-2", state: .dead, total: ["CPU": 4], available: ["CPU": 1]),
            NodeView(id: "n-3", total: ["CPU": 4]),
        ]
        #expect(Placement.choose(demand: ["CPU": 1], nodes: nodes) == .node("n-3"))
        #expect(Placement.choose(demand: ["CPU": 1], nodes: Array(nodes.prefix(2))) == .pending(reason: "no alive node"))
        #expect(Placement.choose(demand: ["CPU": 1], nodes: []) == .pending(reason: "no alive node"))
    }

    @Test("pending reasons say what is lacking")
    func pendingReasons() {
        let nodes = [
            NodeView(id: "n-1", total: ["CPU": 8]),
            NodeView(id: "n-2", total: ["CPU": 8, "GPU": 1], available: ["CPU": 8, "GPU": 0.25]),
        ]
        let demand: ResourceSet = ["CPU": 1, "GPU": 0.5, "accelerator_type:A100": 1]
        #expect(
            Placement.choose(demand: demand, nodes: nodes)
                == .pending(reason: "needs GPU 0.5, accelerator_type:A100 1; no node has them free (largest free: GPU 0.25 on n-2)")
        )
        #expect(
            Placement.choose(demand: ["CPU": 16], nodes: nodes)
                == .pending(reason: "needs CPU 16; no node has it free (largest free: CPU 8 on n-1)")
        )
        let split = [
            NodeView(id: "n-1", total: ["CPU": 4]),
            NodeView(id: "n-2", total: ["CPU": 4, "GPU": 1], available: ["CPU": 1, "GPU": 1]),
        ]
        #expect(
            Placement.choose(demand: ["CPU": 2, "GPU": 1], nodes: split)
                == .pending(reason: "needs CPU 2, GPU 1; no single node has all of them free (n-1 lacks GPU; n-2 lacks CPU)")
        )
        #expect(Placement.pendingReason(demand: ["CPU": 1], nodes: split) == "fits on n-1")
    }

    @Test("scale-down stops PENDING, then STARTING, then RUNNING on the emptiest node")
    func stopOrder() {
        let app = DeploymentID(app: "app", name: "D")
        func replica(_ id: String, _ node: String?, _ state: ReplicaState) -> ReplicaRecord {
            ReplicaRecord(id: id, deployment: app, nodeID: node, state: state, specVersion: "v1")
        }
        let nodes = [
            NodeView(id: "busy", total: ["CPU": 8], replicaCount: 3),
            NodeView(id: "light", total: ["CPU": 8], replicaCount: 1),
        ]
        let replicas = [
            replica("D#1", "busy", .running), replica("D#2", "busy", .running), replica("D#3", "busy", .running),
            replica("D#4", "light", .running), replica("D#5", "busy", .stopping), replica("D#6", "busy", .starting),
            replica("D#7", nil, .pending),
        ]
        #expect(
            Placement.chooseReplicasToStop(count: 4, replicas: replicas, nodes: nodes)
                == ["D#7", "D#6", "D#4", "D#3"]
        )
        #expect(Placement.chooseReplicasToStop(count: 10, replicas: replicas, nodes: nodes).count == 6)
        #expect(Placement.chooseReplicasToStop(count: 0, replicas: replicas, nodes: nodes).isEmpty)
    }

    @Test("scale-down empties a whole node rather than one replica from each")
    func emptiesWholeNodes() {
        let app = DeploymentID(app: "app", name: "D")
        let nodes = [
            NodeView(id: "n-1", total: ["CPU": 2], replicaCount: 2),
            NodeView(id: "n-2", total: ["CPU": 2], replicaCount: 2),
        ]
        let replicas = [("D#1", "n-1"), ("D#2", "n-1"), ("D#3", "n-2"), ("D#4", "n-2")].map {
            ReplicaRecord(id: $0.0, deployment: app, nodeID: $0.1, state: .running, specVersion: "v1")
        }
        #expect(Placement.chooseReplicasToStop(count: 2, replicas: replicas, nodes: nodes) == ["D#4", "D#3"])
    }
}

@Suite("Replica state machine")
struct ReplicaStateTests {
    @Test("legal transitions only move forward")
    func transitions() {
        #expect(ReplicaState.pending.legalNextStates == [.starting, .stopping])
        #expect(ReplicaState.starting.legalNextStates == [.running, .stopping, .failed])
        #expect(ReplicaState.running.legalNextStates == [.stopping, .failed])
        #expect(ReplicaState.stopping.legalNextStates == [.stopped, .failed])
        #expect(ReplicaState.stopped.isFinal && ReplicaState.failed.isFinal)
        #expect(ReplicaState.allCases.filter(\.isLive) == [.pending, .starting, .running])
        for state in ReplicaState.allCases {
            #expect(!state.canMove(to: state))
            #expect(!state.canMove(to: .pending))
        }
        #expect(ReplicaState.running.rawValue == "RUNNING")
        #expect(NodeState.draining.rawValue == "DRAINING")
    }

    @Test("a record refuses illegal moves")
    func recordMoves() {
        var record = ReplicaRecord(id: "D#1", deployment: DeploymentID(app: "a", name: "D"), specVersion: "v1")
        #expect(record.state == .pending)
        let moved0 = record.move(to: .running)
        #expect(!moved0)
        let moved1 = record.move(to: .starting)
        #expect(moved1)
        let moved2 = record.move(to: .running)
        #expect(moved2)
        let moved3 = record.move(to: .starting)
        #expect(!moved3)
        let moved4 = record.move(to: .stopping)
        #expect(moved4)
        let moved5 = record.move(to: .running)
        #expect(!moved5)
        #expect(record.state == .stopping)
        #expect(record.deployment.description == "a/D")
    }
}
