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
            try await cluster.deploy("""
                applications:
                  - name: busy
                    route_prefix: /busy
                    deployments:
                      - name: B
                        handler: sleep
                        user_config: {ms: 100}
                        max_ongoing_requests: 8
                        ray_actor_options: {num_cpus: 0.5}
                        autoscaling_config:
                          min_replicas: 1
                          max_replicas: 4
                          target_ongoing_requests: 2
                          upscale_delay_s: 1
                          downscale_delay_s: 3
                          metrics_interval_s: 0.5
                          look_back_period_s: 2
                """)
            _ = try await cluster.waitForRunning(app: "busy", deployment: "B", replicas: 1)
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
            await clients.value
            _ = try await cluster.waitForRunning(app: "busy", deployment: "B", replicas: 1, timeout: .seconds(30))
            #expect(failures.withLockedValue { $0 }.isEmpty, "\(failures.withLockedValue { $0.prefix(3) })")
            let (_, body) = try await cluster.adminCall(.get, "/api/serve/events")
            let decisions = (try JSONValue.parse(body))["events"]?.arrayValue?.filter { $0["kind"]?.stringValue == "autoscale" } ?? []
            #expect(decisions.contains { $0["after"]?.doubleValue == 4 })
            #expect(decisions.last?["after"]?.doubleValue == 1)
            #expect(decisions.allSatisfy { !($0["reason"]?.stringValue ?? "").isEmpty })
        }
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
