import ArgumentParser
import ServeCore

/// `serve-head`: filled in by the "working cluster" issue; today it answers `--help` and `--version`.
struct ServeHeadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve-head",
        abstract: "swift-serve serve-head (not yet implemented).",
        version: ServeVersion.string
    )

    func run() throws {
        throw ValidationError("serve-head is not implemented yet; see the README.")
    }
}

ServeHeadCommand.main()
