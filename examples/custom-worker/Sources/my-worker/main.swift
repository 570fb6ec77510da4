import NIOCore
import Serve
import ServeCore
import ServeWorker

/// A deployment of our own: greets in the language its `user_config` names, and keeps a count
/// of the requests this replica has answered (replicas are independent instances).
actor Greeter: Deployment {
    private var language: String
    private var answered = 0
    private let replicaID: String

    init(context: ReplicaContext) {
        self.replicaID = context.replicaID
        self.language = context.userConfig?["language"]?.stringValue ?? "en"
    }

    func handle(_ request: ServeRequest) async throws -> ServeResponse {
        self.answered += 1
        let name = request.query("name") ?? "world"
        let greeting = self.language == "fr" ? "Bonjour" : "Hello"
        return .text("\(greeting), \(name)! (replica \(self.replicaID), request \(self.answered))\n")
    }

    /// A new user_config arrives without a restart.
    func reconfigure(userConfig: JSONValue?) async throws {
        self.language = userConfig?["language"]?.stringValue ?? "en"
    }
}

WorkerCommand.registry.register("greeter") { context in Greeter(context: context) }
await WorkerCommand.runFromCommandLine()
