// Host names and addresses, as configuration and the verifier's JWKS fetch
// judge them.
#ifndef SIGNET_BASE_NET_H_
#define SIGNET_BASE_NET_H_

#include "absl/strings/string_view.h"

namespace signet::base {

// True for "localhost" (any case), an IPv4 address in 127.0.0.0/8 written
// as a literal address, and "::1" / "[::1]". A name that merely starts like
// one ("127.evil.example", "localhost.evil.example") is not loopback: it
// resolves wherever its owner wants.
bool IsLoopbackHost(absl::string_view host);

}  // namespace signet::base

#endif  // SIGNET_BASE_NET_H_
