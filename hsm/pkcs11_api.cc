#include "hsm/pkcs11_api.h"

namespace signet::hsm {

CK_RV FunctionListApi::GetSlotList(bool token_present,
                                   std::vector<CK_SLOT_ID>* slots) {
  // The list can change between the two calls: retry on CKR_BUFFER_TOO_SMALL.
  for (int attempt = 0; attempt < 4; ++attempt) {
    CK_ULONG count = 0;
    CK_RV rv = functions_->C_GetSlotList(token_present ? CK_TRUE : CK_FALSE,
                                         nullptr, &count);
    if (rv != CKR_OK) return rv;
    slots->assign(count, 0);
    if (count == 0) return CKR_OK;
    rv = functions_->C_GetSlotList(token_present ? CK_TRUE : CK_FALSE,
                                   slots->data(), &count);
    if (rv == CKR_BUFFER_TOO_SMALL) continue;
    if (rv != CKR_OK) return rv;
    slots->resize(count);
    return CKR_OK;
  }
  return CKR_BUFFER_TOO_SMALL;
}

CK_RV FunctionListApi::GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO* info) {
  return functions_->C_GetTokenInfo(slot, info);
}

namespace {
// Far above the few hundred mechanisms PKCS#11 3.0 defines.
constexpr CK_ULONG kMaxMechanisms = 1 << 16;
}  // namespace

CK_RV FunctionListApi::GetMechanismList(CK_SLOT_ID slot,
                                        std::vector<CK_MECHANISM_TYPE>* mechs) {
  CK_ULONG count = 0;
  CK_RV rv = functions_->C_GetMechanismList(slot, nullptr, &count);
  if (rv != CKR_OK) return rv;
  if (count == 0) {
    mechs->clear();
    return CKR_OK;
  }
  // A module that claims more mechanisms than PKCS#11 defines is broken
  // (and count + 1 below must not wrap).
  if (count > kMaxMechanisms) return CKR_GENERAL_ERROR;
  // One element more than asked for: Debian bookworm's p11-kit-client, in
  // C_GetMechanismList, drops the mechanisms it does not forward by moving
  // the rest of the list down one element too many, reading past the
  // buffer's end (valgrind saw it). The spare element makes that read ours.
  mechs->assign(count + 1, 0);
  rv = functions_->C_GetMechanismList(slot, mechs->data(), &count);
  mechs->resize(rv == CKR_OK ? count : 0);
  return rv;
}

CK_RV FunctionListApi::GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type,
                                        CK_MECHANISM_INFO* info) {
  return functions_->C_GetMechanismInfo(slot, type, info);
}

CK_RV FunctionListApi::OpenSession(CK_SLOT_ID slot, CK_FLAGS flags,
                                   CK_SESSION_HANDLE* session) {
  return functions_->C_OpenSession(slot, flags, nullptr, nullptr, session);
}

CK_RV FunctionListApi::CloseSession(CK_SESSION_HANDLE session) {
  return functions_->C_CloseSession(session);
}

CK_RV FunctionListApi::Login(CK_SESSION_HANDLE session, CK_USER_TYPE user,
                             const unsigned char* pin, CK_ULONG pin_len) {
  // PKCS#11 takes a non-const pointer; no module writes through it.
  return functions_->C_Login(session, user, const_cast<unsigned char*>(pin),
                             pin_len);
}

CK_RV FunctionListApi::FindObjects(CK_SESSION_HANDLE session,
                                   CK_ATTRIBUTE* templ, CK_ULONG count,
                                   std::vector<CK_OBJECT_HANDLE>* found) {
  found->clear();
  CK_RV rv = functions_->C_FindObjectsInit(session, templ, count);
  if (rv != CKR_OK) return rv;
  CK_OBJECT_HANDLE batch[64];
  for (;;) {
    CK_ULONG n = 0;
    rv = functions_->C_FindObjects(session, batch, 64, &n);
    if (rv != CKR_OK || n == 0) break;
    found->insert(found->end(), batch, batch + n);
  }
  CK_RV final_rv = functions_->C_FindObjectsFinal(session);
  return rv != CKR_OK ? rv : final_rv;
}

CK_RV FunctionListApi::GetAttributeValue(CK_SESSION_HANDLE session,
                                         CK_OBJECT_HANDLE object,
                                         CK_ATTRIBUTE* templ, CK_ULONG count) {
  return functions_->C_GetAttributeValue(session, object, templ, count);
}

CK_RV FunctionListApi::GenerateKeyPair(
    CK_SESSION_HANDLE session, CK_MECHANISM* mechanism,
    CK_ATTRIBUTE* public_templ, CK_ULONG public_count,
    CK_ATTRIBUTE* private_templ, CK_ULONG private_count,
    CK_OBJECT_HANDLE* public_key, CK_OBJECT_HANDLE* private_key) {
  return functions_->C_GenerateKeyPair(session, mechanism, public_templ,
                                       public_count, private_templ,
                                       private_count, public_key, private_key);
}

CK_RV FunctionListApi::CreateObject(CK_SESSION_HANDLE session,
                                    CK_ATTRIBUTE* templ, CK_ULONG count,
                                    CK_OBJECT_HANDLE* object) {
  return functions_->C_CreateObject(session, templ, count, object);
}

CK_RV FunctionListApi::DestroyObject(CK_SESSION_HANDLE session,
                                     CK_OBJECT_HANDLE object) {
  return functions_->C_DestroyObject(session, object);
}

CK_RV FunctionListApi::SignInit(CK_SESSION_HANDLE session,
                                CK_MECHANISM* mechanism, CK_OBJECT_HANDLE key) {
  return functions_->C_SignInit(session, mechanism, key);
}

CK_RV FunctionListApi::Sign(CK_SESSION_HANDLE session,
                            const unsigned char* data, CK_ULONG data_len,
                            unsigned char* signature, CK_ULONG* signature_len) {
  return functions_->C_Sign(session, const_cast<unsigned char*>(data), data_len,
                            signature, signature_len);
}

CK_RV FunctionListApi::GenerateRandom(CK_SESSION_HANDLE session,
                                      unsigned char* out, CK_ULONG len) {
  return functions_->C_GenerateRandom(session, out, len);
}

}  // namespace signet::hsm
