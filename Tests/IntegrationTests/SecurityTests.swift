import Foundation
import HTTPTypes
import NIOCore
import ServeCore
import ServeWire
import Testing

/// DESIGN.md "Every connection between nodes is authenticated with the cluster token", and the
/// ingress's limits, checked against the real binaries.
@Suite("Security", .serialized)
struct SecurityTests {
    private func adminCall(
        _ cluster: TestCluster, _ method: HTTPRequest.Method, _ path: String, authorization: String?, body: String? = nil
    ) async throws -> Int {
        var fields = HTTPFields()
        if let authorization { fields[.authorization] = authorization }
        let head = HTTPRequest(method: method, scheme: "http", authority: "127.0.0.1", path: path, headerFields: fields)
        let response = try await cluster.admin.send(head, body: body.map { ByteBuffer(string: $0) }, timeout: .seconds(30))
        _ = try await response.body.collect(upTo: 1 << 20)
        return response.head.status.code
    }

    @Test("a wrong token is refused for a worker's join, an admin deploy, a control stream and a worker's data plane, and never logged")
    func wrongToken() async throws {
        let wrong = "wrong-token-\(UInt32.random(in: 0...UInt32.max))"
        try await withCluster { cluster in
            // A worker: refused, exits 2 saying why.
            let refused = try await cluster.addWorker(cpus: 1, token: wrong)
            #expect(try await refused.waitForExit() == 2)
            #expect(refused.output.contains("refused this worker") && refused.output.contains("token"), "\(refused.output)")
            _ = try await cluster.head.waitForOutput(matching: "refused a worker with a wrong or missing cluster token")

            // The admin API: every mutating call needs the bearer token; reading does not.
            let config = "applications: [{name: a, route_prefix: /a, deployments: [{name: A, handler: echo}]}]"
            for authorization in [nil, "Bearer \(wrong)", "Basic \(cluster.token)", "Bearer \(cluster.token)x", "Bearer"] {
                #expect(try await self.adminCall(cluster, .put, "/api/serve/applications/", authorization: authorization, body: config) == 401)
                #expect(try await self.adminCall(cluster, .delete, "/api/serve/applications/", authorization: authorization) == 401)
                #expect(try await self.adminCall(cluster, .post, "/api/serve/shutdown", authorization: authorization) == 401)
            }
            #expect(try await self.adminCall(cluster, .get, "/api/serve/applications/", authorization: nil) == 200)
            #expect(try await cluster.status()["applications"]?.objectValue?.isEmpty == true)
            _ = try await cluster.head.waitForOutput(matching: "refused an admin call with a wrong or missing cluster token")
            #expect(try await self.adminCall(cluster, .put, "/api/serve/applications/", authorization: "Bearer \(cluster.token)", body: config) == 200)

            // A control stream opened by hand: the RPC fails with `unauthenticated`.
            let connection = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: cluster.clusterPort)
            let response = try await connection.send(
                HTTPRequest(method: .post, scheme: "http", authority: "serve", path: ControlPaths.connect,
                    headerFields: [.contentType: RPC.contentType, .authorization: "Bearer \(wrong)"]),
                body: ByteBuffer(), timeout: .seconds(10))
            _ = try await response.body.collect(upTo: 1 << 20)
            #expect(response.body.trailers?[HTTPField.Name("serve-status")!] == "16")

            // A worker's data plane: nothing is served without the token.
            let worker = try await cluster.addWorker(cpus: 1)
            let nodes = try await cluster.waitForNodes(1)
            let port = try #require(nodes.first?["address"]?.stringValue?.split(separator: ":").last.flatMap { Int($0) })
            let data = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: port)
            for token in [nil, wrong] {
                var fields: HTTPFields = [ServeHeaders.replica: "A#x"]
                if let token { fields[ServeHeaders.token] = token }
                let answer = try await data.send(HTTPRequest(method: .get, scheme: "http", authority: "w", path: "/", headerFields: fields))
                _ = try await answer.body.collect(upTo: 1 << 20)
                #expect(answer.head.status == .unauthorized)
            }
            await data.close()
            await connection.close()
            _ = try await worker.waitForOutput(matching: "refused a data-plane request")

            // The wrong token appears in no log (only the refused worker's own command line has it).
            #expect(!cluster.head.output.contains(wrong))
            #expect(!worker.output.contains(wrong))
        }
    }

    @Test("a worker offering resources the head cannot account for (negative, absurdly large) is refused and exits 2; the head keeps serving")
    func impossibleResources() async throws {
        try await withCluster { cluster in
            for cpus in ["-1", "1e30"] {
                let worker = try Child("serve-worker", [
                    "--address", "127.0.0.1:\(cluster.clusterPort)", "--num-cpus=\(cpus)", "--num-gpus", "0",
                    "--listen-host", "127.0.0.1", "--token", cluster.token,
                ])
                #expect(try await worker.waitForExit() == 2, "\(worker.output)")
                #expect(worker.output.contains("its resources cannot be taken: CPU is"), "\(worker.output)")
            }
            _ = try await cluster.head.waitForOutput(matching: "refused a worker's registration")
            let (_, nodes) = try await cluster.adminCall(.get, "/api/cluster/nodes")
            #expect(!nodes.contains("ALIVE"), "\(nodes)")
            try await cluster.addWorker(cpus: 1)
            _ = try await cluster.waitForNodes(1)
        }
    }

    @Test("the admin API listens on loopback only unless told otherwise")
    func adminOnLoopback() async throws {
        try await withCluster { cluster in
            #expect(cluster.head.output.contains("admin API     http://127.0.0.1:\(cluster.adminPort)"))
            // Linux only, like the project: a missing table must fail the check, not skip it.
            let table = try String(contentsOfFile: "/proc/net/tcp", encoding: .utf8)
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            let hexPort = String(format: "%04X", cluster.adminPort)
            var listeners: [String] = []
            for line in table.split(separator: "\n").dropFirst() {
                let columns = line.split(separator: " ").map(String.init)
                guard columns.count > 3, columns[1].hasSuffix(":\(hexPort)"), columns[3] == "0A" else { continue }
                listeners.append(columns[1])
            }
            #expect(listeners == ["0100007F:\(hexPort)"], "\(listeners)")
        }
    }

    @Test("the ingress answers 413 past http_options.max_body_bytes, 431 past 100 header fields, and still serves")
    func ingressLimits() async throws {
        try await withCluster(headCPUs: 1) { cluster in
            try await cluster.deploy("""
                http_options: {max_body_bytes: 1000}
                applications:
                  - name: echo
                    route_prefix: /echo
                    deployments: [{name: Echo, handler: echo}]
                """)
            _ = try await cluster.waitForRunning(app: "echo", deployment: "Echo", replicas: 1)
            let (small, body) = try await cluster.post("/echo", body: String(repeating: "s", count: 1000))
            #expect(small == 200 && body.count == 1000)
            let (large, _) = try await cluster.post("/echo", body: String(repeating: "l", count: 5000))
            #expect(large == 413)
            var fields = HTTPFields()
            for index in 0..<120 { fields[HTTPField.Name("x-field-\(index)")!] = "v" }
            let crowded = try await cluster.ingress.send(
                HTTPRequest(method: .get, scheme: "http", authority: "127.0.0.1", path: "/echo", headerFields: fields), timeout: .seconds(30))
            #expect(crowded.head.status.code == 431)
            let (code, path, _) = try await cluster.get("/echo/after")
            #expect(code == 200 && path == "/after")
        }
    }
}
