import Foundation
import HTTPTypes
import ServeCore
import Testing

/// Logs a user can turn up and read (issue 19, item 2): `--log-level`/`--log-format` on the
/// binaries, and `serve logs REPLICA [--follow]` through the head from the replica's worker.
@Suite("Logs", .serialized)
struct LogsTests {
    @Test("--log-format json --log-level debug: the head writes one JSON object per line, debug lines included, with the serve.* keys as fields")
    func jsonLines() async throws {
        try await withCluster(headCPUs: 1, headArguments: ["--log-format", "json", "--log-level", "debug"]) { cluster in
            try await cluster.deploy(
                """
                applications:
                  - name: hello
                    route_prefix: /hello
                    deployments:
                      - {name: Hello, handler: echo, ray_actor_options: {num_cpus: 0.1}}
                """)
            _ = try await cluster.waitForRunning(app: "hello", deployment: "Hello", replicas: 1)
            let lines = cluster.head.output.split(separator: "\n").filter { $0.hasPrefix("{") }
            let objects = try lines.map { try JSONValue.parse(String($0)) }
            #expect(!objects.isEmpty)
            #expect(objects.allSatisfy { $0["time"]?.stringValue != nil && $0["level"]?.stringValue != nil && $0["message"]?.stringValue != nil })
            #expect(objects.contains { $0["level"]?.stringValue == "debug" }, "no debug line in:\n\(cluster.head.output.suffix(3000))")
            #expect(objects.contains { $0["message"]?.stringValue == "deployed" && $0["serve.deployment"]?.stringValue == "hello/Hello" })
            #expect(objects.contains { $0["serve.node"]?.stringValue != nil })
        }
    }

    @Test("a level or format that does not exist is refused at start, with the choices")
    func badFlags() async throws {
        let level = try Child("serve-worker", ["--address", "127.0.0.1:1", "--log-level", "loud"])
        #expect(try await level.waitForExit() != 0)
        #expect(level.output.contains("--log-level (or SERVE_LOG_LEVEL) must be one of trace, debug, info"), "\(level.output)")
        let format = try Child("serve-head", ["--log-format", "xml", "--http-port", "0", "--admin-port", "0", "--port", "0"])
        #expect(try await format.waitForExit() != 0)
        #expect(format.output.contains("--log-format (or SERVE_LOG_FORMAT) must be text or json"), "\(format.output)")
    }

    @Test("serve logs shows a process replica's output from its worker through the head; --follow prints new lines as they come")
    func serveLogs() async throws {
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("talker-\(UUID().uuidString).py")
        try """
            import os, sys
            from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
            print("talker starting", flush=True)
            class Talker(BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"
                def do_GET(self):
                    print("asked for " + self.path, flush=True)
                    self.send_response(200)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                def log_message(self, *args):
                    pass
            ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Talker).serve_forever()
            """.write(to: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: script) }
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy(
                """
                applications:
                  - name: talk
                    route_prefix: /talk
                    deployments:
                      - {name: Talker, command: ["python3", "\(script.path)"], ray_actor_options: {num_cpus: 0.1}}
                  - name: hello
                    route_prefix: /hello
                    deployments:
                      - {name: Hello, handler: echo, ray_actor_options: {num_cpus: 0.1}}
                """)
            let status = try await cluster.waitForRunning(app: "talk", deployment: "Talker", replicas: 1)
            let replica = status["applications"]?["talk"]?["deployments"]?["Talker"]?["replicas"]?.arrayValue?.first?["replica_id"]?.stringValue ?? "?"
            _ = try await cluster.get("/talk/first")
            let environment = ["SERVE_ADDRESS": "http://127.0.0.1:\(cluster.adminPort)", "SERVE_TOKEN": cluster.token]
            let once = try Child("serve", ["logs", replica], environment: environment)
            #expect(try await once.waitForExit() == 0)
            #expect(once.output.contains("talker starting") && once.output.contains("asked for /first"), "\(once.output)")

            let follow = try Child("serve", ["logs", "--follow", replica], environment: environment)
            _ = try await follow.waitForOutput(matching: "asked for /first")
            _ = try await cluster.get("/talk/second")
            _ = try await follow.waitForOutput(matching: "asked for /second", timeout: .seconds(10))
            follow.signal(SIGTERM)

            // Without the token: refused. A Swift replica: its lines are in its worker's log.
            let (unauthorized, _) = try await ProxyTests.get(cluster.adminPort, "/api/serve/replicas/\(replica.replacingOccurrences(of: "#", with: "%23"))/logs")
            #expect(unauthorized == 401)
            let hello = try await cluster.status()["applications"]?["hello"]?["deployments"]?["Hello"]?["replicas"]?.arrayValue?.first?["replica_id"]?.stringValue ?? "?"
            let swift = try Child("serve", ["logs", hello], environment: environment)
            #expect(try await swift.waitForExit() == 1)
            #expect(swift.output.contains("is a Swift replica: its lines are in its worker's own log"), "\(swift.output)")
        }
    }
}
