import Foundation
import Testing

@testable import ServeCore

/// `benchmarks/placement`: 10,000 replicas (mixed CPU-only, fractional-GPU and custom-resource
/// demands, a fixed seed) placed on 1,000 identical nodes, by one `Reconciler.plan` pass with
/// every target at once, and by calling `Placement.choose` once per replica. Skipped unless
/// `SERVE_BENCH_PLACEMENT=1`; with `SERVE_BENCH_OUT=FILE` it appends markdown table rows there.
///
/// Target (the placement issue): under 100 ms, and within 10% of the lower bound on nodes (per
/// resource, total demand / node size, rounded up; the largest over resources).
@Suite("Placement benchmark")
struct PlacementBenchmark {
    static let nodeCount = 1_000
    static let replicaCount = 10_000
    static let nodeSize: ResourceSet = ["CPU": 16, "GPU": 4, "memory": 68_719_476_736, "disk": 8]

    /// About 200 deployments whose replica counts add up to 10,000.
    static func workload(strategy: PlacementStrategy) -> [DeploymentTarget] {
        var random = SeededGenerator(seed: 0xBE4C_4001)
        var targets: [DeploymentTarget] = []
        var left = Self.replicaCount
        let gib: Int64 = 1 << 30
        while left > 0 {
            let count = min(left, Int.random(in: 1...99, using: &random))
            left -= count
            var demand = ResourceSet()
            switch Int.random(in: 0..<10, using: &random) {
            case 0..<5:  // CPU-only
                demand[ResourceSet.cpu] = [0.5, 1, 1, 2].randomElement(using: &random)!
                demand[ResourceSet.memory] = ResourceQuantity(integer: [1, 2, 4].randomElement(using: &random)! * gib)
            case 5..<8:  // a fraction of a GPU
                demand[ResourceSet.cpu] = 1
                demand[ResourceSet.gpu] = [0.25, 0.5].randomElement(using: &random)!
                demand[ResourceSet.memory] = ResourceQuantity(integer: 4 * gib)
            default:  // a custom resource
                demand[ResourceSet.cpu] = 0.5
                demand["disk"] = [1, 2].randomElement(using: &random)!
            }
            targets.append(
                DeploymentTarget(
                    id: DeploymentID(app: "bench", name: "D\(targets.count)"),
                    replicas: count,
                    specVersion: "v1",
                    demand: demand,
                    strategy: strategy
                )
            )
        }
        return targets
    }

    static func nodes() -> [NodeView] {
        (0..<Self.nodeCount).map { number in
            NodeView(
                id: "node-\(String(number + 10_000).dropFirst())", total: Self.nodeSize,
                gpus: GPUAllocator(gpuIDs: ["0", "1", "2", "3"])
            )
        }
    }

    /// Per resource, total demand over node size, rounded up; the largest.
    static func lowerBound(_ targets: [DeploymentTarget]) -> Int {
        var total = ResourceSet()
        for target in targets {
            for (name, quantity) in target.demand.quantities {
                total[name] = total[name] + quantity * target.replicas
            }
        }
        return total.quantities.map { name, quantity in
            let size = Self.nodeSize[name].units
            return Int((quantity.units + size - 1) / size)
        }.max() ?? 0
    }

    static func milliseconds(_ duration: Duration) -> Double {
        let parts = duration.components
        return Double(parts.seconds) * 1_000 + Double(parts.attoseconds) / 1e15
    }

    /// Replica id → node, from `.start` actions.
    static func starts(_ actions: [ReconcileAction]) -> [String] {
        actions.compactMap {
            if case .start(_, _, let nodeID) = $0 { nodeID } else { nil }
        }
    }

    func row(_ cells: [String]) -> String {
        "| " + cells.joined(separator: " | ") + " |"
    }

    @Test(.enabled(if: ProcessInfo.processInfo.environment["SERVE_BENCH_PLACEMENT"] == "1"))
    func placeTenThousandReplicas() throws {
        let clock = ContinuousClock()
        let nodes = Self.nodes()
        var rows: [String] = []
        let bound = Self.lowerBound(Self.workload(strategy: .pack))

        func report(_ name: String, _ times: [Double], used: Int?, pending: Int) {
            let sorted = times.sorted()
            let median = sorted[sorted.count / 2]
            let usedText = used.map(String.init) ?? "–"
            let ratio = used.map { String(format: "%.3f×", Double($0) / Double(bound)) } ?? "–"
            let line = row([
                name, String(format: "%.1f ms", median), String(format: "%.1f ms", sorted[0]), "\(times.count)",
                usedText, "\(bound)", ratio, "\(pending)",
            ])
            print(line)
            rows.append(line)
        }

        // 1. One Reconciler.plan pass, all targets at once (the production path), PACK.
        let targets = Self.workload(strategy: .pack)
        #expect(targets.map(\.replicas).reduce(0, +) == Self.replicaCount)
        var planTimes: [Double] = []
        var planned: [ReconcileAction] = []
        for _ in 0..<7 {
            var next = 0
            let started = clock.now
            planned = Reconciler.plan(targets: targets, replicas: [], nodes: nodes) { id in
                next += 1
                return "\(id.name)#\(next)"
            }
            planTimes.append(Self.milliseconds(clock.now - started))
        }
        let planNodes = Self.starts(planned)
        let pendingCount = planned.count - planNodes.count
        report("Reconciler.plan, 1 pass, PACK", planTimes, used: Set(planNodes).count, pending: pendingCount)

        // 2. The same placements by calling Placement.choose per replica on a NodeView array.
        var views = nodes
        var indexByID: [String: Int] = [:]
        for (index, node) in views.enumerated() { indexByID[node.id] = index }
        var chosen: [String] = []
        var choosePending = 0
        let started = clock.now
        var number = 0
        for target in targets {
            for _ in 0..<target.replicas {
                number += 1
                switch Placement.choose(demand: target.demand, nodes: views, strategy: target.strategy) {
                case .node(let nodeID):
                    let index = indexByID[nodeID]!
                    views[index].available = views[index].available.subtracting(target.demand)
                    views[index].replicaCount += 1
                    _ = views[index].gpus!.allocate(replicaID: "r\(number)", amount: target.demand[ResourceSet.gpu])
                    chosen.append(nodeID)
                case .pending:
                    choosePending += 1
                }
            }
        }
        report("Placement.choose × 10,000, PACK", [Self.milliseconds(clock.now - started)], used: Set(chosen).count, pending: choosePending)
        #expect(chosen == planNodes, "plan and choose place differently")

        // 3. A steady pass over the 10,000 placed replicas: nothing to do.
        var placedReplicas: [ReplicaRecord] = []
        var finalViews = nodes
        for action in planned {
            guard case .start(let replicaID, let deployment, let nodeID) = action else { continue }
            placedReplicas.append(
                ReplicaRecord(id: replicaID, deployment: deployment, nodeID: nodeID, state: .running, specVersion: "v1")
            )
            let index = indexByID[nodeID]!
            let demand = targets.first { $0.id == deployment }!.demand
            finalViews[index].available = finalViews[index].available.subtracting(demand)
            finalViews[index].replicaCount += 1
            _ = finalViews[index].gpus!.allocate(replicaID: replicaID, amount: demand[ResourceSet.gpu])
        }
        var steadyTimes: [Double] = []
        for _ in 0..<7 {
            let started = clock.now
            let actions = Reconciler.plan(targets: targets, replicas: placedReplicas, nodes: finalViews) { _ in "x" }
            steadyTimes.append(Self.milliseconds(clock.now - started))
            #expect(actions.isEmpty)
        }
        report("Reconciler.plan, steady pass over 10,000 RUNNING", steadyTimes, used: nil, pending: 0)

        // 4. The same workload with every deployment SPREAD (scans every node per replica).
        let spreadTargets = Self.workload(strategy: .spread)
        var spreadTimes: [Double] = []
        var spreadActions: [ReconcileAction] = []
        for _ in 0..<3 {
            var next = 0
            let started = clock.now
            spreadActions = Reconciler.plan(targets: spreadTargets, replicas: [], nodes: nodes) { id in
                next += 1
                return "\(id.name)#\(next)"
            }
            spreadTimes.append(Self.milliseconds(clock.now - started))
        }
        let spreadNodes = Self.starts(spreadActions)
        report("Reconciler.plan, 1 pass, SPREAD", spreadTimes, used: Set(spreadNodes).count, pending: spreadActions.count - spreadNodes.count)

        #expect(pendingCount == 0)
        print("PlacementBenchmark: lower bound \(bound) nodes; PACK used \(Set(planNodes).count)")

        if let path = ProcessInfo.processInfo.environment["SERVE_BENCH_OUT"], !path.isEmpty {
            var text = ""
            let existing = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            if !existing.contains("| measurement |") {
                text += "| measurement | median | min | runs | nodes used | lower bound | used / bound | pending |\n"
                text += "|---|---:|---:|---:|---:|---:|---:|---:|\n"
            }
            text += rows.joined(separator: "\n") + "\n"
            if let handle = FileHandle(forWritingAtPath: path) {
                handle.seekToEndOfFile()
                handle.write(Data(text.utf8))
                handle.closeFile()
            } else {
                try text.write(toFile: path, atomically: true, encoding: .utf8)
            }
        }
    }
}
