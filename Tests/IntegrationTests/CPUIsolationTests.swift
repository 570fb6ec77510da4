import Foundation
import NIOConcurrencyHelpers
import ServeCore
import Testing

/// CPU-bound handlers must not stall unrelated requests (issue 13, item 2): a replica's thread
/// budget runs on threads of its own, not on the Swift concurrency pool every other replica,
/// router and heartbeat of the node shares.
@Suite("CPU-bound replicas", .serialized)
struct CPUIsolationTests {
    @Test("an echo request is answered while a cpu replica burns as many threads as the machine has cores")
    func echoWhileCPUBurns() async throws {
        // As many budgeted threads as cores: enough to hold the whole concurrency pool if the
        // work ran there.
        let cores = ProcessInfo.processInfo.activeProcessorCount
        try await withCluster(headCPUs: Double(cores + 1)) { cluster in
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: burn
                    route_prefix: /burn
                    deployments:
                      - name: Burn
                        handler: cpu
                        max_ongoing_requests: \(cores)
                        ray_actor_options: {num_cpus: \(cores)}
                  - name: echo
                    route_prefix: /echo
                    deployments:
                      - {name: Echo, handler: echo, ray_actor_options: {num_cpus: 0.5}}
                """)
            _ = try await cluster.waitForRunning(app: "burn", deployment: "Burn", replicas: 1)
            _ = try await cluster.waitForRunning(app: "echo", deployment: "Echo", replicas: 1)

            let finished = NIOLockedValueBox(0)
            let burners = (0..<cores).map { _ in
                Task {
                    let answer = try await cluster.get("/burn?ms=6000")
                    finished.withLockedValue { $0 += 1 }
                    return answer.0
                }
            }
            // Every burner is running (the worker's heartbeat says so: it runs on the same pool).
            let deadline = ContinuousClock.now + .seconds(20)
            var ongoing = false
            while ContinuousClock.now < deadline && finished.withLockedValue({ $0 }) == 0 {
                let (_, metrics) = try await cluster.adminCall(.get, "/metrics")
                if metrics.contains("serve_ongoing_requests{application=\"burn\",deployment=\"Burn\"} \(cores)") {
                    ongoing = true
                    break
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(ongoing, "the worker never reported \(cores) cpu requests running at once")

            let (code, body, _) = try await cluster.get("/echo/ping")
            let burnedMeanwhile = finished.withLockedValue { $0 }
            #expect(code == 200 && body == "/ping")
            #expect(burnedMeanwhile == 0, "the echo waited for \(burnedMeanwhile) cpu request(s) to finish")
            for burner in burners { #expect(try await burner.value == 200) }
        }
    }
}
