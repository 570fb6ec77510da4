import Foundation
import NIOConcurrencyHelpers
import ServeCore
import Testing

/// The application autoscaler through the real binaries: queue lengths reported by workers and
/// held at the router drive the replica count.
@Suite("Application autoscaling", .serialized)
struct AutoscalingTests {
    private func runningCount(_ status: JSONValue, _ app: String, _ deployment: String) -> Int {
        status["applications"]?[app]?["deployments"]?[deployment]?["replicas"]?.arrayValue?
            .filter { $0["state"]?.stringValue == "RUNNING" }.count ?? 0
    }

    private func target(_ status: JSONValue, _ app: String, _ deployment: String) -> Int {
        Int(status["applications"]?[app]?["deployments"]?[deployment]?["target_replicas"]?.doubleValue ?? -1)
    }

    @Test("16 clients on a 100 ms deployment scale it to max_replicas 4, and it returns to 1 after the load, no request failing")
    func scaleUpAndDown() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 8)
            _ = try await cluster.waitForNodes(1)
            // The same file `serve simulate` reads below.
            try await cluster.deploy(String(contentsOf: packageRoot.appendingPathComponent("examples/autoscale.yaml"), encoding: .utf8))

            _ = try await cluster.waitForRunning(app: "busy", deployment: "B", replicas: 1)
            let loadStart = Date()
            let failures = NIOLockedValueBox<[String]>([])
            let sending = NIOLockedValueBox(true)
            let clients = Task {
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<16 {
                        group.addTask {
                            while sending.withLockedValue({ $0 }) {
                                do {
                                    let (code, body, _) = try await cluster.get("/busy")
                                    if code != 200 { failures.withLockedValue { $0.append("\(code): \(body)") } }
                                } catch {
                                    failures.withLockedValue { $0.append("\(error)") }
                                }
                            }
                        }
                    }
                }
            }
            let up = ContinuousClock.now + .seconds(30)
            var status = JSONValue.null
            while ContinuousClock.now < up {
                status = try await cluster.status()
                if self.runningCount(status, "busy", "B") == 4 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(self.runningCount(status, "busy", "B") == 4, "\(status.jsonString())")
            sending.withLockedValue { $0 = false }
            let loadStop = Date()
            await clients.value
            _ = try await cluster.waitForRunning(app: "busy", deployment: "B", replicas: 1, timeout: .seconds(30))
            #expect(failures.withLockedValue { $0 }.isEmpty, "\(failures.withLockedValue { $0.prefix(3) })")
            let (_, body) = try await cluster.adminCall(.get, "/api/serve/events")
            let decisions = (try JSONValue.parse(body))["events"]?.arrayValue?.filter { $0["kind"]?.stringValue == "autoscale" } ?? []
            #expect(decisions.contains { $0["after"]?.doubleValue == 4 })
            #expect(decisions.last?["after"]?.doubleValue == 1)
            #expect(decisions.allSatisfy { !($0["reason"]?.stringValue ?? "").isEmpty })

            // `serve status` shows the bounds and the last decision with its reason.
            let statusCommand = try Child("serve", ["status", "--address", "http://127.0.0.1:\(cluster.adminPort)"])
            #expect(try await statusCommand.waitForExit() == 0)
            let tree = statusCommand.output
            #expect(tree.contains("autoscaling 1-4: "), "\(tree)")
            #expect(tree.contains("downscale 4 → 1"), "\(tree)")

            // `serve simulate`, fed the same config and the load this test applied, predicts the
            // same timeline within one metrics interval (plus the 100 ms decision tick).
            let upAt = try #require(decisions.first { $0["after"]?.doubleValue == 4 }?["time"]?.doubleValue)
            let downAt = try #require(decisions.last { $0["after"]?.doubleValue == 1 }?["time"]?.doubleValue)
            let observedUp = upAt - loadStart.timeIntervalSince1970
            let observedDown = downAt - loadStop.timeIntervalSince1970
            let (simulatedUp, simulatedDown) = try await self.simulate(loadSeconds: loadStop.timeIntervalSince(loadStart))
            print("autoscaling timeline: observed up \(observedUp) down \(observedDown); simulated up \(simulatedUp) down \(simulatedDown)")
            let tolerance = 0.5 + 0.1
            #expect(abs(observedUp - simulatedUp) <= tolerance, "scale-up: observed \(observedUp) s, simulated \(simulatedUp) s")
            #expect(abs(observedDown - simulatedDown) <= tolerance, "scale-down: observed \(observedDown) s, simulated \(simulatedDown) s")
        }
    }

    /// Runs `serve simulate` on the config above with 16 clients of 100 ms for `loadSeconds`;
    /// returns when it scales 1 → 4 (from the load's start) and 4 → 1 (from the load's end).
    private func simulate(loadSeconds: Double) async throws -> (Double, Double) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("simulate-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let trace = directory.appendingPathComponent("trace.csv")
        try "time_s,clients,service_ms\n0,16,100\n\(loadSeconds),0,100\n\(loadSeconds + 30),0,100\n"
            .write(to: trace, atomically: true, encoding: .utf8)
        let simulation = try Child("serve", ["simulate", "--config", "examples/autoscale.yaml", "--load", trace.path])
        #expect(try await simulation.waitForExit() == 0, "\(simulation.output)")
        func time(_ change: String) throws -> Double {
            let line = try #require(simulation.output.split(separator: "\n").first { $0.contains(change) }, "\(simulation.output)")
            return try #require(line.firstMatch(of: /t=([\d.]+) s/).flatMap { Double($0.1) })
        }
        return (try time("1 → 4"), try time("4 → 1") - loadSeconds)
    }

    @Test("min_replicas 0: a cold request is answered, then the deployment goes back to 0")
    func scaleFromZero() async throws {
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: cold
                    route_prefix: /cold
                    deployments:
                      - name: C
                        handler: echo
                        autoscaling_config:
                          min_replicas: 0
                          max_replicas: 2
                          downscale_delay_s: 1
                          look_back_period_s: 1
                          metrics_interval_s: 0.5
                """)
            var status = try await cluster.status()
            #expect(self.target(status, "cold", "C") == 0)
            let started = ContinuousClock.now
            let (code, body, _) = try await cluster.get("/cold/first")
            #expect(code == 200 && body == "/first")
            #expect(ContinuousClock.now - started < .seconds(10))
            let down = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < down {
                status = try await cluster.status()
                if self.target(status, "cold", "C") == 0 && self.runningCount(status, "cold", "C") == 0 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(self.target(status, "cold", "C") == 0, "\(status.jsonString())")
            #expect(self.runningCount(status, "cold", "C") == 0)
        }
    }
}
