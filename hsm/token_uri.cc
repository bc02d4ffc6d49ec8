#include "hsm/token_uri.h"

extern "C" {
#include <p11-kit/uri.h>
}

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace signet::hsm {

void TokenUri::UriDeleter::operator()(P11KitUri* uri) const {
  p11_kit_uri_free(uri);
}

absl::StatusOr<TokenUri> TokenUri::Parse(absl::string_view uri) {
  std::string text(uri);
  std::shared_ptr<P11KitUri> parsed(p11_kit_uri_new(), UriDeleter());
  if (parsed == nullptr) return absl::ResourceExhaustedError("p11_kit_uri_new");
  int rc = p11_kit_uri_parse(text.c_str(), P11_KIT_URI_FOR_TOKEN, parsed.get());
  if (rc != P11_KIT_URI_OK) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token URI \"", text,
        "\" is not a valid PKCS#11 URI: ", p11_kit_uri_message(rc)));
  }
  if (p11_kit_uri_any_unrecognized(parsed.get())) {
    return absl::InvalidArgumentError(
        absl::StrCat("token URI \"", text,
                     "\" has attributes that do not select a token; use "
                     "token=, manufacturer=, model= or serial="));
  }
  return TokenUri(std::move(text), std::move(parsed));
}

bool TokenUri::Matches(const CK_TOKEN_INFO& info) const {
  // p11-kit takes a non-const pointer but only reads it.
  return p11_kit_uri_match_token_info(uri_.get(),
                                      const_cast<CK_TOKEN_INFO*>(&info)) == 1;
}

std::string TokenLabel(const CK_TOKEN_INFO& info) {
  absl::string_view label(reinterpret_cast<const char*>(info.label),
                          sizeof(info.label));
  while (!label.empty() && (label.back() == ' ' || label.back() == '\0')) {
    label.remove_suffix(1);
  }
  return std::string(label);
}

}  // namespace signet::hsm
