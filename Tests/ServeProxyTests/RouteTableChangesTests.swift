import ServeCore
import ServeProto
import Testing

@testable import ServeProxy

@Suite("Route table changes")
struct RouteTableChangesTests {
    /// What crosses the wire: the update serialized and read back.
    private func sent(_ update: PBRouteTableUpdate) throws -> PBRouteTableUpdate {
        try PBRouteTableUpdate(serializedBytes: try update.serializedBytes() as [UInt8])
    }

    private func replica(_ number: Int, node: Int = 0, models: [String] = []) -> ReplicaRoute {
        ReplicaRoute(id: String(format: "D#%05d", number), nodeID: "n\(node)", host: "10.0.0.\(node)", port: 7000, models: models)
    }

    private func app(_ name: String, replicas: [ReplicaRoute], others: [String] = [], prefix: String? = nil) -> ApplicationRoute {
        ApplicationRoute(
            name: name, routePrefix: prefix ?? "/\(name)",
            ingress: DeploymentRoute(id: DeploymentID(app: name, name: "D"), maxOngoingRequests: 5, maxQueuedRequests: -1, replicas: replicas),
            others: others.map { DeploymentRoute(id: DeploymentID(app: name, name: $0), maxOngoingRequests: 5, maxQueuedRequests: -1, replicas: []) })
    }

    @Test("one replica more among 5,000 is sent as that replica alone, and the node's copy equals the head's table")
    func oneReplicaMore() throws {
        let before = RouteTable(applications: [self.app("big", replicas: (0..<5000).map { self.replica($0) }), self.app("other", replicas: [])])
        var after = before
        after.applications[0].ingress.replicas.append(self.replica(5000, node: 3))
        var mirror = RouteTableMirror()
        let v1 = TableVersion(epoch: 7, sequence: 1)
        let v2 = TableVersion(epoch: 7, sequence: 2)
        #expect(try mirror.apply(self.sent(before.update(version: v1, proxyLocation: .everyNode, httpHost: "", httpPort: 8000))))
        let change = try self.sent(after.update(version: v2, changedFrom: (v1, before), proxyLocation: .everyNode, httpHost: "", httpPort: 8000))
        #expect(change.baseSequence == 1)
        #expect(change.applications.count == 1 && change.applications[0].partial)
        #expect(change.applications[0].deployments.map(\.replicas.count) == [1])
        #expect((try change.serializedBytes() as [UInt8]).count < 200)
        #expect(try mirror.apply(change))
        #expect(mirror.table == after && mirror.version == v2)
    }

    @Test("a change from a table the node does not hold is refused, naming both versions; an old table is ignored")
    func missingBase() throws {
        let table = RouteTable(applications: [self.app("a", replicas: [self.replica(1)])])
        var mirror = RouteTableMirror()
        let v1 = TableVersion(epoch: 1, sequence: 1)
        let v2 = TableVersion(epoch: 1, sequence: 2)
        let v3 = TableVersion(epoch: 1, sequence: 3)
        var changed = table
        changed.applications[0].ingress.replicas = []
        let change = changed.update(version: v3, changedFrom: (v2, table), proxyLocation: .everyNode, httpHost: "", httpPort: 8000)
        #expect(throws: RouteTableMirror.MissingBase.self) { try mirror.apply(change) }
        #expect(try mirror.apply(table.update(version: v1, proxyLocation: .everyNode, httpHost: "", httpPort: 8000)))
        do {
            _ = try mirror.apply(change)
            Issue.record("a change from 1.2 applied onto 1.1")
        } catch {
            #expect(error.description == "a route table change from 1.2 arrived, but this node holds 1.1")
        }
        #expect(mirror.table == table)
        // The whole table of 1.1 again, or an older one: ignored.
        #expect(try !mirror.apply(changed.update(version: v1, proxyLocation: .everyNode, httpHost: "", httpPort: 8000)))
        #expect(mirror.table == table)
    }

    @Test("random histories of tables: every change applied to the node's copy gives the head's table", arguments: 0..<20)
    func randomHistories(seed: UInt64) throws {
        var generator = SeededGenerator(seed: seed)
        var head = RouteTable()
        var mirror = RouteTableMirror()
        var previous: (version: TableVersion, table: RouteTable)?
        var bytesWhole = 0
        var bytesChanges = 0
        for step in 1...60 {
            head = Self.mutate(head, using: &generator)
            if Bool.random(using: &generator) { head.requestTimeout = Bool.random(using: &generator) ? .seconds(3) : nil }
            let version = TableVersion(epoch: 42, sequence: UInt64(step))
            let whole = head.update(version: version, proxyLocation: .everyNode, httpHost: "h", httpPort: 8000)
            let change = try self.sent(head.update(version: version, changedFrom: previous, proxyLocation: .everyNode, httpHost: "h", httpPort: 8000))
            bytesWhole += (try whole.serializedBytes() as [UInt8]).count
            bytesChanges += (try change.serializedBytes() as [UInt8]).count
            #expect(try mirror.apply(change))
            #expect(mirror.table == head, "step \(step), seed \(seed)")
            if mirror.table != head { return }
            previous = (version, head)
        }
        #expect(bytesChanges < bytesWhole / 3, "changes \(bytesChanges) B, whole tables \(bytesWhole) B")
    }

    /// One random edit: an application added, removed or reshaped, or replicas of one of its
    /// deployments added, removed, moved or given other models.
    private static func mutate(_ table: RouteTable, using generator: inout SeededGenerator) -> RouteTable {
        var table = table
        let roll = Int.random(in: 0..<10, using: &generator)
        if table.applications.count < 2 || roll == 0 {
            let name = "app\(Int.random(in: 0..<1000, using: &generator))"
            guard !table.applications.contains(where: { $0.name == name }) else { return table }
            let replicas = (0..<Int.random(in: 0..<30, using: &generator)).map {
                ReplicaRoute(id: "\(name)#\($0)", nodeID: "n\($0 % 7)", host: "10.0.0.\($0 % 7)", port: 7000)
            }.sorted { $0.id < $1.id }  // the head's order
            table.applications.append(ApplicationRoute(
                name: name, routePrefix: "/\(name)",
                ingress: DeploymentRoute(id: DeploymentID(app: name, name: "In"), maxOngoingRequests: 5, maxQueuedRequests: -1, replicas: replicas),
                others: [DeploymentRoute(id: DeploymentID(app: name, name: "Model"), maxOngoingRequests: 2, maxQueuedRequests: 10, replicas: [])]))
            return table
        }
        let at = Int.random(in: 0..<table.applications.count, using: &generator)
        switch roll {
        case 1:
            table.applications.remove(at: at)
        case 2:
            table.applications[at].routePrefix += "x"
            if Bool.random(using: &generator) { table.applications.swapAt(0, at) }
        case 3:
            table.applications[at].others.append(DeploymentRoute(
                id: DeploymentID(app: table.applications[at].name, name: "Extra\(Int.random(in: 0..<100, using: &generator))"),
                maxOngoingRequests: 1, maxQueuedRequests: -1, replicas: []))
        case 4:
            table.applications[at].ingress.unavailable = Bool.random(using: &generator) ? "replicas failed to start" : nil
            table.applications[at].ingress.maxOngoingRequests += 1
        default:
            var route = Bool.random(using: &generator) || table.applications[at].others.isEmpty
                ? table.applications[at].ingress : table.applications[at].others[0]
            var replicas = route.replicas
            for _ in 0..<Int.random(in: 1...5, using: &generator) {
                switch Int.random(in: 0..<4, using: &generator) {
                case 0 where !replicas.isEmpty: replicas.remove(at: Int.random(in: 0..<replicas.count, using: &generator))
                case 1 where !replicas.isEmpty: replicas[Int.random(in: 0..<replicas.count, using: &generator)].models = ["m\(Int.random(in: 0..<9, using: &generator))"]
                case 2 where !replicas.isEmpty: replicas[Int.random(in: 0..<replicas.count, using: &generator)].port += 1
                default:
                    let id = "\(route.id.app)#\(route.id.name)-\(Int.random(in: 0..<100_000, using: &generator))"
                    if !replicas.contains(where: { $0.id == id }) { replicas.append(ReplicaRoute(id: id, nodeID: "n9", host: "10.0.0.9", port: 7001)) }
                }
            }
            route.replicas = replicas.sorted { $0.id < $1.id }
            if route.id == table.applications[at].ingress.id {
                table.applications[at].ingress = route
            } else {
                table.applications[at].others[0] = route
            }
        }
        return table
    }
}
