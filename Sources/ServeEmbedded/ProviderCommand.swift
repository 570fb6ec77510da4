import Foundation
import ServeCore
import ServeHead
import ServeWorker

/// One program run to its end for a node provider (the command provider's scripts, the
/// kubernetes provider's curl): its stdout, or a `NodeProviderError` with its stderr when it
/// exits non-zero or runs past `timeout` (then its process group is killed).
enum ProviderCommand {
    static func run(
        _ name: String, argv: [String], environment: [String: String], timeout: Double, scratch: URL
    ) async throws -> String {
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        let call = UUID().uuidString
        let out = scratch.appendingPathComponent("\(call).out")
        let err = scratch.appendingPathComponent("\(call).err")
        defer {
            try? FileManager.default.removeItem(at: out)
            try? FileManager.default.removeItem(at: err)
        }
        let process: ChildProcess
        do {
            process = try ChildProcess(argv: argv, environment: environment, workingDirectory: nil, logPath: out.path, errorPath: err.path)
        } catch {
            throw NodeProviderError("could not run the \(name) command \(argv.joined(separator: " ")): \(error)")
        }
        let status = await Self.exitStatus(process, timeout: .milliseconds(Int(timeout * 1000)))
        let stdout = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        let stderr = ((try? String(contentsOf: err, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard let status else {
            throw NodeProviderError("the \(name) command ran past timeout_s \(ResourceQuantity(timeout)) and was killed\(stderr.isEmpty ? "" : ": \(stderr.suffix(500))")")
        }
        guard status == 0 else {
            throw NodeProviderError("the \(name) command exited with status \(status)\(stderr.isEmpty ? "" : ": \(stderr.suffix(500))")")
        }
        return stdout
    }

    /// The exit status, or nil when it ran past `timeout` (then its process group is killed).
    static func exitStatus(_ process: ChildProcess, timeout: Duration) async -> Int32? {
        let (statuses, continuation) = AsyncStream<Int32?>.makeStream()
        process.onExit { continuation.yield($0) }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            if !Task.isCancelled { continuation.yield(nil) }
        }
        var first: Int32?? = nil
        for await status in statuses {
            first = status
            break
        }
        timer.cancel()
        if case .some(.none) = first {
            process.signal(SIGKILL)
        }
        return first ?? nil
    }
}

/// A provider's answers to launches by request id, so a launch asked again with the same id is
/// answered without starting anything (the last 100 requests).
struct LaunchAnswers {
    private var answers: [String: [ProviderNode]] = [:]
    private var order: [String] = []

    subscript(requestID: String) -> [ProviderNode]? {
        self.answers[requestID]
    }

    mutating func remember(_ requestID: String, _ answer: [ProviderNode]) {
        self.answers[requestID] = answer
        self.order.append(requestID)
        if self.order.count > 100 { self.answers[self.order.removeFirst()] = nil }
    }
}
