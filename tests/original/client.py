# The original ROOM client (TCP-Chat-Room, seed 002), reassembled from the project's README
# without changes to its logic. The only edit: the port comes from the environment so a test
# can run it against a server on an ephemeral port (the original hard-codes 55555).
import os
import socket
import threading

# entrada do nick do cliente
alias = input('Escolha um nick para voce >>> ')
# criando um objeto cliente
client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# conectando o cliente ao local host e a porta http respectivamente
client.connect(('127.0.0.1', int(os.environ.get('ROOM_PORT', '55555'))))


# funcao para receber mensagens de outros clientes pelo servidor
def client_receive():
    while True:
        try:
            msg = client.recv(1024).decode('utf-8')
            # se a msg for igual a 'alias?' que foi definido la no server.py
            if msg == 'alias?':
                client.send(alias.encode('utf-8'))
            else:
                print(msg)
        except:
            print('Error!')
            client.close()
            break


# funcao para enviar mensagens para outros clientes pelo servidor
def client_send():
    while True:
        # como vai ficar a mensagem (seunick: mensagem que digitou)
        msg = f'{alias}: {input("")}'
        # mandando a mensagem
        client.send(msg.encode('utf-8'))


receive_thread = threading.Thread(target=client_receive)
receive_thread.start()

send_thread = threading.Thread(target=client_send)
send_thread.start()
