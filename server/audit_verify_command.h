// `signetd audit-verify`: checks an audit log from the command line
// (server/audit_verify.h does the work; the README's "Audit log" has the
// operator's view). Its own command line, parsed with CLI11 like signetctl's.
#ifndef SIGNET_SERVER_AUDIT_VERIFY_COMMAND_H_
#define SIGNET_SERVER_AUDIT_VERIFY_COMMAND_H_

namespace signet::server {

// argv[0] is "audit-verify" (the subcommand), then its options and the log.
// Exit status: 0 verified, 1 the log is broken or cannot be read, 2 a usage
// error.
int AuditVerifyMain(int argc, char** argv);

}  // namespace signet::server

#endif  // SIGNET_SERVER_AUDIT_VERIFY_COMMAND_H_
