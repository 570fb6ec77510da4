import Foundation
import HTTPTypes
import NIOCore
import ServeCore
import ServeWire
import Testing

/// What one config can do to a head (issue 20, items 11 and 12), through the real binaries.
@Suite("Head under a big config", .serialized)
struct HeadLoadTests {
    @Test("num_replicas: 1000000000 is refused with its path, nothing is saved, and the head keeps serving")
    func hugeReplicaCountRefused() async throws {
        try await withCluster(headCPUs: 1) { cluster in
            _ = try await cluster.waitForNodes(1)
            let small = """
                applications:
                  - name: hello
                    route_prefix: /hello
                    deployments:
                      - {name: Hello, handler: echo, ray_actor_options: {num_cpus: 0.1}}
                """
            try await cluster.deploy(small)
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 1)
            let saved = try String(contentsOf: cluster.stateDirectory.appendingPathComponent("config.json"), encoding: .utf8)

            let (code, body) = try await cluster.adminCall(
                .put, "/api/serve/applications/", body: small.replacingOccurrences(of: "handler: echo,", with: "handler: echo, num_replicas: 1000000000,"))
            #expect(code == 400, "\(body)")
            #expect(body.contains(#""path":"applications[0].deployments[0].num_replicas""#), "\(body)")
            #expect(body.contains("must be at most 10000"), "\(body)")
            let after = try String(contentsOf: cluster.stateDirectory.appendingPathComponent("config.json"), encoding: .utf8)
            #expect(after == saved, "a refused config must not be saved")
            let (hello, _, _) = try await cluster.get("/hello")
            #expect(hello == 200)
        }
    }

    @Test("deploying 2,000 applications at once leaves the head's own node ALIVE, and every replica runs")
    func manyApplications() async throws {
        let count = 2000
        try await withCluster(headCPUs: 4) { cluster in
            let nodes = try await cluster.waitForNodes(1)
            let nodeID = try #require(nodes.first?["node_id"]?.stringValue)
            var yaml = "applications:\n"
            for index in 0..<count {
                yaml += "  - {name: a\(index), route_prefix: /a\(index), deployments: [{name: D, handler: echo, ray_actor_options: {num_cpus: 0.001}}]}\n"
            }
            try await cluster.deploy(yaml)

            let deadline = ContinuousClock.now + .seconds(120)
            var running = 0
            while ContinuousClock.now < deadline {
                let status = try await cluster.status()
                running = status["applications"]?.objectValue?.values.filter { $0["status"]?.stringValue == "RUNNING" }.count ?? 0
                if running == count { break }
                try await Task.sleep(for: .milliseconds(500))
            }
            let (_, events) = try await cluster.adminCall(.get, "/api/serve/events")
            #expect(!events.contains("is DEAD") && !cluster.head.output.contains("is DEAD"), "the head's own node was declared DEAD during the deploy")
            #expect(!events.contains("node rejoined"), "the head's own node had to register again")
            #expect(running == count, "only \(running) of \(count) applications are RUNNING")
            let after = try await cluster.waitForNodes(1)
            #expect(after.first { $0["node_id"]?.stringValue == nodeID }?["state"]?.stringValue == "ALIVE")
            let (code, body, _) = try await cluster.get("/a1999/x")
            #expect(code == 200 && body == "/x", "\(code) \(body)")
        }
    }
}
