import Foundation
import HTTPTypes
import NIOCore
import ServeCore
import ServeWire
import Testing

/// The control-plane simulator (`serve-control-sim`, benchmarks/control-plane; issue 16) against
/// a real head: its nodes register, host replicas, take route tables and play dead as real
/// workers would, so the benchmark built on it measures the real protocol.
@Suite("Simulated workers against a real head", .serialized)
struct ControlPlaneSimTests {
    @Test("20 simulated nodes host 100 replicas and hold the latest table; 2 reset are DEAD, re-placed, then ALIVE again")
    func simulatedNodes() async throws {
        try await withCluster(headCPUs: 0) { cluster in
            let sim = try await SimulatedNodes(cluster: cluster, nodes: 20, cpusPerNode: 8)
            do {
                try await Self.run(cluster, sim)
            } catch {
                print("--- serve-control-sim ---\n" + sim.child.output)
                await sim.close()
                throw error
            }
            await sim.close()
        }
    }

    @Test("--tables version: the nodes read only each table's header, host replicas and report the head's latest table")
    func versionOnlyTables() async throws {
        try await withCluster(headCPUs: 0) { cluster in
            let sim = try await SimulatedNodes(cluster: cluster, nodes: 5, cpusPerNode: 4, extra: ["--tables", "version"])
            do {
                try await cluster.deploy("""
                    applications:
                      - {name: small, route_prefix: /small, deployments: [{name: D, handler: echo, num_replicas: 10}]}
                    """)
                _ = try await cluster.waitForRunning(app: "small", deployment: "D", replicas: 10)
                try await FailureTests.eventually("every simulated node to report the head's latest table", timeout: .seconds(30), cluster) {
                    let (_, body) = try await cluster.adminCall(.get, "/api/cluster/nodes")
                    let json = try JSONValue.parse(body)
                    guard let latest = json["route_table_version"]?.stringValue else { return false }
                    let nodes = json["nodes"]?.arrayValue ?? []
                    let held = try await sim.status()["tables"]?["holding"]?[latest]?.doubleValue
                    return nodes.count == 5 && nodes.allSatisfy { $0["proxy_table_version"]?.stringValue == latest } && held == 5
                }
                let status = try await sim.status()
                #expect(status["tables_mode"]?.stringValue == "version")
                #expect(status["replicas"]?["RUNNING"]?.doubleValue == 10)
            } catch {
                print("--- serve-control-sim ---\n" + sim.child.output)
                await sim.close()
                throw error
            }
            await sim.close()
        }
    }

    static func run(_ cluster: TestCluster, _ sim: SimulatedNodes) async throws {
        var simIDs = Set<String>()
        try await FailureTests.eventually("20 simulated nodes ALIVE at the head", timeout: .seconds(60), cluster) {
            simIDs = Set(try await Self.nodes(cluster).filter { $0.id.hasPrefix("sim-") && $0.state == "ALIVE" }.map(\.id))
            return simIDs.count == 20
        }
        #expect(try await sim.status()["nodes"]?["registered"]?.doubleValue == 20)

        try await cluster.deploy("""
            applications:
              - name: fleet
                route_prefix: /fleet
                deployments:
                  - {name: D, handler: echo, num_replicas: 100}
            """)
        let status = try await cluster.waitForRunning(app: "fleet", deployment: "D", replicas: 100)
        let placed = status["applications"]?["fleet"]?["deployments"]?["D"]?["replicas"]?.arrayValue ?? []
        #expect(placed.allSatisfy { simIDs.contains($0["node_id"]?.stringValue ?? "") }, "every replica is on a simulated node")
        try await FailureTests.eventually("the simulator to hold the 100 replicas", timeout: .seconds(30), cluster) {
            try await sim.status()["replicas"]?["RUNNING"]?.doubleValue == 100
        }

        // Every simulated proxy holds the head's latest table, and says so in its heartbeat.
        try await FailureTests.eventually("every simulated node to hold the head's latest table", timeout: .seconds(30), cluster) {
            let (_, body) = try await cluster.adminCall(.get, "/api/cluster/nodes")
            let json = try JSONValue.parse(body)
            guard let latest = json["route_table_version"]?.stringValue else { return false }
            let reported = (json["nodes"]?.arrayValue ?? []).filter { simIDs.contains($0["node_id"]?.stringValue ?? "") }
                .filter { $0["proxy_table_version"]?.stringValue == latest }.count
            let held = try await sim.status()["tables"]?["holding"]?[latest]?.doubleValue
            return reported == 20 && held == 20
        }

        // Two nodes crash (their connections reset): the head declares them DEAD at once and
        // places their replicas on the others.
        let kill = try await sim.post("/kill", #"{"count": 2, "mode": "reset"}"#)
        let killed = Set((kill["killed"]?.arrayValue ?? []).compactMap(\.stringValue))
        #expect(killed.count == 2, "\(kill.jsonString())")
        try await FailureTests.eventually("the killed nodes DEAD at the head", timeout: .seconds(30), cluster) {
            try await Self.nodes(cluster).filter { killed.contains($0.id) && $0.state == "DEAD" }.count == 2
        }
        try await FailureTests.eventually("100 replicas RUNNING again, none on a killed node", timeout: .seconds(60), cluster) {
            let replicas = try await cluster.status()["applications"]?["fleet"]?["deployments"]?["D"]?["replicas"]?.arrayValue ?? []
            let running = replicas.filter { $0["state"]?.stringValue == "RUNNING" }
            let onKilled = replicas.filter { killed.contains($0["node_id"]?.stringValue ?? "") }
            return running.count == 100 && replicas.count == 100 && onKilled.isEmpty
        }

        // They come back: ALIVE again, registered in the simulator.
        let rejoin = try await sim.post("/rejoin", "{}")
        #expect(Set((rejoin["rejoined"]?.arrayValue ?? []).compactMap(\.stringValue)) == killed)
        try await FailureTests.eventually("the rejoined nodes ALIVE at the head", timeout: .seconds(30), cluster) {
            let alive = try await Self.nodes(cluster).filter { killed.contains($0.id) && $0.state == "ALIVE" }.count
            let registered = try await sim.status()["nodes"]?["registered"]?.doubleValue
            return alive == 2 && registered == 20
        }
        #expect(try await sim.status()["reconnects"]?.doubleValue == 0, "no stream ended but the two killed ones")
    }

    static func nodes(_ cluster: TestCluster) async throws -> [(id: String, state: String)] {
        let (_, body) = try await cluster.adminCall(.get, "/api/cluster/nodes")
        return (try JSONValue.parse(body)["nodes"]?.arrayValue ?? []).map {
            ($0["node_id"]?.stringValue ?? "", $0["state"]?.stringValue ?? "")
        }
    }
}

/// A `serve-control-sim` process with its control API.
final class SimulatedNodes: Sendable {
    let child: Child
    let control: HTTP1ConnectionPool

    init(cluster: TestCluster, nodes: Int, cpusPerNode: Double, extra: [String] = []) async throws {
        self.child = try Child("serve-control-sim", [
            "--address", "127.0.0.1:\(cluster.clusterPort)", "--token", cluster.token, "--nodes", String(nodes),
            "--cpus-per-node", String(cpusPerNode), "--control-port", "0",
        ] + extra)
        let banner = try await self.child.waitForOutput(matching: "control API on")
        guard let match = banner.firstMatch(of: /control API on http:\/\/127\.0\.0\.1:(\d+)/), let port = Int(match.1) else {
            throw HarnessFailure("no control port in:\n\(banner)")
        }
        self.control = HTTP1ConnectionPool(host: "127.0.0.1", port: port)
    }

    func status() async throws -> JSONValue {
        try await self.call(.get, "/status", body: nil)
    }

    func post(_ path: String, _ body: String) async throws -> JSONValue {
        try await self.call(.post, path, body: body)
    }

    private func call(_ method: HTTPRequest.Method, _ path: String, body: String?) async throws -> JSONValue {
        var fields = HTTPFields()
        if let body { fields[.contentLength] = String(body.utf8.count) }
        let head = HTTPRequest(method: method, scheme: "http", authority: "127.0.0.1", path: path, headerFields: fields)
        let response = try await self.control.send(head, body: body.map { ByteBuffer(string: $0) }, timeout: .seconds(30))
        let text = String(buffer: try await response.body.collect(upTo: 64 << 20))
        guard response.head.status == .ok else { throw HarnessFailure("\(method) \(path) answered \(response.head.status.code): \(text)") }
        return try JSONValue.parse(text)
    }

    func close() async {
        await self.control.close()
        self.child.signal(SIGTERM)
        _ = try? await self.child.waitForExit(timeout: .seconds(10))
    }
}
